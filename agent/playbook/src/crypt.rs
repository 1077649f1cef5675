//! SHA-crypt (`$5$` / `$6$`, Ulrich Drepper's specification), for `password_hash`.
//!
//! The `user` module expects an already hashed password; playbooks produce it with
//! `password_hash('sha512')`, so the runtime needs the same algorithm as glibc's crypt(3).

use sha2::{Digest, Sha256, Sha512};

const ALPHABET: &[u8; 64] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const DEFAULT_ROUNDS: usize = 5000;

fn hash(sha512: bool, parts: &[&[u8]]) -> Vec<u8> {
    if sha512 {
        let mut h = Sha512::new();
        for p in parts {
            h.update(p);
        }
        h.finalize().to_vec()
    } else {
        let mut h = Sha256::new();
        for p in parts {
            h.update(p);
        }
        h.finalize().to_vec()
    }
}

fn repeat_to(source: &[u8], len: usize) -> Vec<u8> {
    source.iter().cycle().take(len).copied().collect()
}

fn encode(out: &mut String, b2: u8, b1: u8, b0: u8, n: usize) {
    let mut w = (u32::from(b2) << 16) | (u32::from(b1) << 8) | u32::from(b0);
    for _ in 0..n {
        out.push(ALPHABET[(w & 0x3f) as usize] as char);
        w >>= 6;
    }
}

/// Hashes `password` with SHA-512 crypt (`sha512 = true`) or SHA-256 crypt.
pub fn sha_crypt(password: &str, salt: &str, rounds: Option<usize>, sha512: bool) -> String {
    let p = password.as_bytes();
    let salt: String = salt.chars().take(16).collect();
    let s = salt.as_bytes();
    let rounds_value = rounds.unwrap_or(DEFAULT_ROUNDS).clamp(1000, 999_999_999);

    let b = hash(sha512, &[p, s, p]);
    let size = b.len();
    let mut a_input = Vec::new();
    a_input.extend_from_slice(p);
    a_input.extend_from_slice(s);
    a_input.extend(repeat_to(&b, p.len()));
    let mut n = p.len();
    while n > 0 {
        if n & 1 == 1 {
            a_input.extend_from_slice(&b);
        } else {
            a_input.extend_from_slice(p);
        }
        n >>= 1;
    }
    let a = hash(sha512, &[&a_input]);

    let dp = hash(sha512, &[&p.repeat(p.len())]);
    let p_seq = repeat_to(&dp, p.len());
    let ds = hash(sha512, &[&s.repeat(16 + usize::from(a[0]))]);
    let s_seq = repeat_to(&ds, s.len());

    let mut c = a;
    for i in 0..rounds_value {
        let mut input = Vec::with_capacity(size * 2 + p_seq.len() * 2 + s_seq.len());
        if i % 2 == 1 {
            input.extend_from_slice(&p_seq);
        } else {
            input.extend_from_slice(&c);
        }
        if i % 3 != 0 {
            input.extend_from_slice(&s_seq);
        }
        if i % 7 != 0 {
            input.extend_from_slice(&p_seq);
        }
        if i % 2 == 1 {
            input.extend_from_slice(&c);
        } else {
            input.extend_from_slice(&p_seq);
        }
        c = hash(sha512, &[&input]);
    }

    let mut out = String::new();
    out.push_str(if sha512 { "$6$" } else { "$5$" });
    if rounds.is_some() {
        out.push_str(&format!("rounds={rounds_value}$"));
    }
    out.push_str(&salt);
    out.push('$');
    if sha512 {
        const ORDER: [(usize, usize, usize); 21] = [
            (0, 21, 42),
            (22, 43, 1),
            (44, 2, 23),
            (3, 24, 45),
            (25, 46, 4),
            (47, 5, 26),
            (6, 27, 48),
            (28, 49, 7),
            (50, 8, 29),
            (9, 30, 51),
            (31, 52, 10),
            (53, 11, 32),
            (12, 33, 54),
            (34, 55, 13),
            (56, 14, 35),
            (15, 36, 57),
            (37, 58, 16),
            (59, 17, 38),
            (18, 39, 60),
            (40, 61, 19),
            (62, 20, 41),
        ];
        for (x, y, z) in ORDER {
            encode(&mut out, c[x], c[y], c[z], 4);
        }
        encode(&mut out, 0, 0, c[63], 2);
    } else {
        const ORDER: [(usize, usize, usize); 10] = [
            (0, 10, 20),
            (21, 1, 11),
            (12, 22, 2),
            (3, 13, 23),
            (24, 4, 14),
            (15, 25, 5),
            (6, 16, 26),
            (27, 7, 17),
            (18, 28, 8),
            (9, 19, 29),
        ];
        for (x, y, z) in ORDER {
            encode(&mut out, c[x], c[y], c[z], 4);
        }
        encode(&mut out, 0, c[31], c[30], 3);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference vectors (as produced by glibc's crypt(3)).
    #[test]
    fn specification_vectors() {
        assert_eq!(
            sha_crypt("Hello world!", "saltstring", None, true),
            "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1"
        );
        assert_eq!(
            sha_crypt("Hello world!", "saltstring", None, false),
            "$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5"
        );
    }
}
