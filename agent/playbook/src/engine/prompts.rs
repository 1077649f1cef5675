//! `vars_prompt`: asks for play variables on a terminal, as ansible-playbook does.
//!
//! A variable given with `-e` is not asked for. Without a terminal nothing is asked: the
//! runtime warns "Not prompting as we are not in interactive mode" and uses `default`,
//! or, like Ansible, the text `None` when there is no default. `encrypt` hashes the value
//! (sha512_crypt / sha256_crypt, with `salt` or a random one).

use super::*;
use std::io::{BufRead, IsTerminal, Write};

/// One `vars_prompt` entry after templating.
struct Prompt {
    name: String,
    prompt: String,
    default: Option<String>,
    private: bool,
    confirm: bool,
    encrypt: Option<String>,
    salt: Option<String>,
}

impl Prompt {
    fn from_value(entry: &Value) -> Prompt {
        let text = |key: &str| {
            entry
                .get_attr(key)
                .ok()
                .filter(|v| !v.is_undefined() && !v.is_none())
                .map(|v| modules::value_to_string(&v))
        };
        let flag = |key: &str, default: bool| {
            entry
                .get_attr(key)
                .ok()
                .and_then(|v| modules::parse_bool(&v))
                .unwrap_or(default)
        };
        let name = text("name").unwrap_or_default();
        Prompt {
            prompt: text("prompt").unwrap_or_else(|| name.clone()),
            name,
            default: text("default"),
            private: flag("private", true),
            confirm: flag("confirm", false),
            encrypt: text("encrypt"),
            salt: text("salt"),
        }
    }

    /// The question as Ansible words it: `prompt [default]: `.
    fn question(&self) -> String {
        match &self.default {
            Some(default) => format!("{} [{default}]: ", self.prompt),
            None => format!("{}: ", self.prompt),
        }
    }
}

impl Runner<'_> {
    /// Sets the play's prompted variables (above play vars, below vars_files).
    pub(super) fn prompt_vars(&mut self, play: &Play) -> Result<(), String> {
        let ctx = self.context(&self.play_scope.clone(), &[]);
        for entry in &play.vars_prompt {
            let entry = self
                .templar
                .template(entry, &ctx)
                .map_err(|e| format!("vars_prompt: {e}"))?;
            let prompt = Prompt::from_value(&entry);
            if self
                .options
                .extra_vars
                .iter()
                .any(|(k, _)| *k == prompt.name)
            {
                continue;
            }
            let answer = if std::io::stdin().is_terminal() {
                ask_on_terminal(&prompt)
            } else {
                self.emit("[WARNING]: Not prompting as we are not in interactive mode");
                None
            };
            let value = answered_value(&prompt, answer)?;
            self.play_vars
                .push((prompt.name.clone(), Value::from(value)));
        }
        Ok(())
    }
}

/// What the variable becomes: the answer, else the default, else Ansible's `None`
/// text; hashed when `encrypt` asks for it.
fn answered_value(prompt: &Prompt, answer: Option<String>) -> Result<String, String> {
    let value = answer
        .filter(|a| !a.is_empty())
        .or_else(|| prompt.default.clone())
        .unwrap_or_else(|| "None".into());
    let Some(method) = &prompt.encrypt else {
        return Ok(value);
    };
    let salt = prompt
        .salt
        .clone()
        .unwrap_or_else(crate::filters::random_salt);
    match method.as_str() {
        "sha512_crypt" => Ok(crate::crypt::sha_crypt(&value, &salt, None, true)),
        "sha256_crypt" => Ok(crate::crypt::sha_crypt(&value, &salt, None, false)),
        other => Err(format!(
            "vars_prompt: encrypt {other:?} is not supported by the native runtime (sha512_crypt, sha256_crypt)"
        )),
    }
}

/// Asks on the terminal (twice with `confirm`, until both answers match).
fn ask_on_terminal(prompt: &Prompt) -> Option<String> {
    loop {
        let first = read_answer(&prompt.question(), prompt.private)?;
        if !prompt.confirm {
            return Some(first);
        }
        let second = read_answer(&format!("confirm {}", prompt.question()), prompt.private)?;
        if first == second {
            return Some(first);
        }
        eprintln!("***** VALUES ENTERED DO NOT MATCH ****");
    }
}

/// Reads one line from the terminal, without echo when `private`.
fn read_answer(question: &str, private: bool) -> Option<String> {
    eprint!("{question}");
    let _ = std::io::stderr().flush();
    let echo = if private { EchoOff::new() } else { None };
    let mut line = String::new();
    let read = std::io::stdin().lock().read_line(&mut line);
    drop(echo);
    if private {
        eprintln!();
    }
    read.ok()?;
    Some(line.trim_end_matches(['\r', '\n']).to_string())
}

/// Turns the terminal's echo off until dropped.
struct EchoOff(libc::termios);

impl EchoOff {
    fn new() -> Option<EchoOff> {
        // SAFETY: tcgetattr/tcsetattr on stdin with a zeroed, then filled, termios.
        unsafe {
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(libc::STDIN_FILENO, &mut saved) != 0 {
                return None;
            }
            let mut quiet = saved;
            quiet.c_lflag &= !libc::ECHO;
            libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &quiet);
            Some(EchoOff(saved))
        }
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in `new`.
        unsafe {
            libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt(default: Option<&str>, encrypt: Option<&str>) -> Prompt {
        Prompt {
            name: "v".into(),
            prompt: "Give".into(),
            default: default.map(String::from),
            private: true,
            confirm: false,
            encrypt: encrypt.map(String::from),
            salt: Some("abcdefgh".into()),
        }
    }

    /// Without an answer the default is used, else Ansible's `None` text; encrypt hashes.
    #[test]
    fn answers_defaults_and_encryption() {
        assert_eq!(
            answered_value(&prompt(Some("d"), None), None),
            Ok("d".into())
        );
        assert_eq!(
            answered_value(&prompt(Some("d"), None), Some("".into())),
            Ok("d".into())
        );
        assert_eq!(
            answered_value(&prompt(Some("d"), None), Some("x".into())),
            Ok("x".into())
        );
        assert_eq!(answered_value(&prompt(None, None), None), Ok("None".into()));
        let hashed = answered_value(&prompt(Some("s3cret"), Some("sha512_crypt")), None);
        assert!(hashed.is_ok_and(|h| h.starts_with("$6$abcdefgh$")));
        assert!(answered_value(&prompt(None, Some("md5_crypt")), None).is_err());
        assert_eq!(prompt(Some("d"), None).question(), "Give [d]: ");
    }
}
