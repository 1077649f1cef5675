//! Ansible's `random`, `comment`, `urlsplit`, `strftime` and `to_datetime` filters and
//! the `now()` function.
//!
//! `random` with a `seed` reproduces Python's `random.Random(seed)` (MT19937 seeded the
//! way CPython seeds it), so `59 | random(seed=inventory_hostname)` picks the same
//! minute as Ansible does. Dates are [`DateTime`] objects that print like Python's
//! `datetime` and offer `strftime()`, `timestamp()` and the date fields; subtracting two
//! of them is not supported.
//!
//! What does not live here: the other filters (`filters`).

use minijinja::value::{Kwargs, Object, ObjectRepr, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind, State};
use sha2::Digest;
use std::sync::Arc;

/// Registers the filters and functions of this module.
pub fn register(env: &mut Environment<'static>) {
    env.add_filter("random", random);
    env.add_filter("comment", comment);
    env.add_filter("urlsplit", urlsplit);
    env.add_filter("strftime", strftime);
    env.add_filter("to_datetime", to_datetime);
    env.add_function("now", now);
}

fn filter_error(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidOperation, message.into())
}

/// CPython's Mersenne Twister, seeded as `random.Random(seed)` seeds it.
struct PythonRandom {
    state: [u32; 624],
    index: usize,
}

impl PythonRandom {
    fn from_key(key: &[u32]) -> PythonRandom {
        let mut mt = [0u32; 624];
        mt[0] = 19_650_218;
        for i in 1..624 {
            mt[i] = 1_812_433_253u32
                .wrapping_mul(mt[i - 1] ^ (mt[i - 1] >> 30))
                .wrapping_add(i as u32);
        }
        let (mut i, mut j) = (1usize, 0usize);
        for _ in 0..624.max(key.len()) {
            mt[i] = (mt[i] ^ (mt[i - 1] ^ (mt[i - 1] >> 30)).wrapping_mul(1_664_525))
                .wrapping_add(key[j])
                .wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= 624 {
                mt[0] = mt[623];
                i = 1;
            }
            if j >= key.len() {
                j = 0;
            }
        }
        for _ in 0..623 {
            mt[i] = (mt[i] ^ (mt[i - 1] ^ (mt[i - 1] >> 30)).wrapping_mul(1_566_083_941))
                .wrapping_sub(i as u32);
            i += 1;
            if i >= 624 {
                mt[0] = mt[623];
                i = 1;
            }
        }
        mt[0] = 0x8000_0000;
        PythonRandom {
            state: mt,
            index: 624,
        }
    }

    /// `random.Random(seed)` for an integer or string seed (CPython's version 2 seeding).
    fn from_seed(seed: &Value) -> PythonRandom {
        let big_endian: Vec<u8> = match seed.as_i64() {
            Some(n) => n.unsigned_abs().to_be_bytes().to_vec(),
            None => {
                let text = seed.as_str().map(String::from).unwrap_or(seed.to_string());
                let mut bytes = text.into_bytes();
                let digest = sha2::Sha512::digest(&bytes);
                bytes.extend_from_slice(&digest);
                bytes
            }
        };
        let mut little_endian: Vec<u8> = big_endian.into_iter().rev().collect();
        while little_endian.last() == Some(&0) {
            little_endian.pop();
        }
        let mut key: Vec<u32> = little_endian
            .chunks(4)
            .map(|chunk| {
                chunk
                    .iter()
                    .rev()
                    .fold(0u32, |word, byte| (word << 8) | u32::from(*byte))
            })
            .collect();
        if key.is_empty() {
            key.push(0);
        }
        PythonRandom::from_key(&key)
    }

    fn next_u32(&mut self) -> u32 {
        if self.index >= 624 {
            self.twist();
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    fn twist(&mut self) {
        for i in 0..624 {
            let y = (self.state[i] & 0x8000_0000) | (self.state[(i + 1) % 624] & 0x7fff_ffff);
            let mut next = self.state[(i + 397) % 624] ^ (y >> 1);
            if y & 1 != 0 {
                next ^= 0x9908_b0df;
            }
            self.state[i] = next;
        }
        self.index = 0;
    }

    /// Python's `_randbelow` for `n` below 2^32: rejection sampling on `n`'s bit length.
    fn below(&mut self, n: u64) -> u64 {
        let bits = 64 - n.leading_zeros();
        loop {
            let r = u64::from(self.next_u32() >> (32 - bits));
            if r < n {
                return r;
            }
        }
    }
}

/// A uniform index below `n`: seeded like Python, or from the system's randomness.
fn index_below(seed: &Option<Value>, n: u64) -> Result<u64, Error> {
    if n == 0 {
        return Err(filter_error("empty range for randrange"));
    }
    match seed {
        Some(seed) if n <= u64::from(u32::MAX) => Ok(PythonRandom::from_seed(seed).below(n)),
        _ => Ok(rand::Rng::gen_range(&mut rand::thread_rng(), 0..n)),
    }
}

/// `end | random(start=0, step=1, seed=None)`: a number of `range(start, end, step)`, or
/// an element of a list (or a character of a string).
fn random(end: Value, kwargs: Kwargs) -> Result<Value, Error> {
    let start: Option<i64> = kwargs.get("start")?;
    let step: Option<i64> = kwargs.get("step")?;
    let seed: Option<Value> = kwargs
        .get::<Option<Value>>("seed")?
        .filter(|s| !s.is_none());
    kwargs.assert_all_used()?;
    if let Some(end) = end.as_i64().filter(|_| end.kind() == ValueKind::Number) {
        let start = start.unwrap_or(0);
        let step = step.filter(|s| *s != 0).unwrap_or(1);
        let width = end - start;
        let count = if step > 0 {
            (width + step - 1) / step
        } else {
            (width + step + 1) / step
        };
        if count <= 0 {
            return Err(filter_error(format!(
                "empty range in randrange({start}, {end}, {step})"
            )));
        }
        let index = index_below(&seed, count as u64)? as i64;
        return Ok(Value::from(start + step * index));
    }
    if start.is_some_and(|s| s != 0) || step.is_some_and(|s| s != 0) {
        return Err(filter_error(
            "start and step can only be used with integer values",
        ));
    }
    let items: Vec<Value> = match end.as_str() {
        Some(text) => text.chars().map(|c| Value::from(c.to_string())).collect(),
        None => end
            .try_iter()
            .map_err(|_| filter_error("random can only be used on sequences and integers"))?
            .collect(),
    };
    if items.is_empty() {
        return Err(filter_error("Cannot choose from an empty sequence"));
    }
    let index = index_below(&seed, items.len() as u64)? as usize;
    Ok(items[index].clone())
}

/// Text parameters of `comment`, as Ansible composes them.
struct CommentStyle {
    newline: String,
    beginning: String,
    prefix: String,
    prefix_count: usize,
    decoration: String,
    postfix: String,
    postfix_count: usize,
    end: String,
}

impl CommentStyle {
    fn new(style: &str, kwargs: &Kwargs) -> Result<CommentStyle, Error> {
        let (beginning, decoration, end) = match style {
            "plain" => ("", "# ", ""),
            "erlang" => ("", "% ", ""),
            "c" => ("", "// ", ""),
            "cblock" => ("/*", " * ", " */"),
            "xml" => ("<!--", " - ", "-->"),
            other => {
                return Err(filter_error(format!(
                    "Invalid style '{other}'. Available styles: plain, erlang, c, cblock, xml"
                )))
            }
        };
        let text = |key: &str, default: &str| -> Result<String, Error> {
            Ok(kwargs
                .get::<Option<String>>(key)?
                .unwrap_or_else(|| default.to_string()))
        };
        let count = |key: &str| -> Result<usize, Error> {
            Ok(kwargs.get::<Option<usize>>(key)?.unwrap_or(1))
        };
        let decoration = text("decoration", decoration)?;
        let prepostfix = decoration.trim_end().to_string();
        Ok(CommentStyle {
            newline: text("newline", "\n")?,
            beginning: text("beginning", beginning)?,
            prefix: text("prefix", &prepostfix)?,
            prefix_count: count("prefix_count")?,
            decoration,
            postfix: text("postfix", &prepostfix)?,
            postfix_count: count("postfix_count")?,
            end: text("end", end)?,
        })
    }

    fn render(&self, text: &str) -> String {
        let nl = &self.newline;
        let beginning = if self.beginning.is_empty() {
            String::new()
        } else {
            format!("{}{nl}", self.beginning)
        };
        let prefix = if self.prefix.is_empty() {
            String::new()
        } else if &self.prefix == nl {
            nl.repeat(self.prefix_count)
        } else {
            format!("{}{nl}", self.prefix).repeat(self.prefix_count)
        };
        let decorated = format!(
            "{}{}",
            self.decoration,
            text.replace(nl.as_str(), &format!("{nl}{}", self.decoration))
        )
        .replace(
            &format!("{}{nl}", self.decoration),
            &format!("{}{nl}", self.decoration.trim_end()),
        );
        let postfix: String = (0..self.postfix_count)
            .map(|_| format!("{nl}{}", self.postfix))
            .collect();
        let end = if self.end.is_empty() {
            String::new()
        } else {
            format!("{nl}{}", self.end)
        };
        format!("{beginning}{prefix}{decorated}{postfix}{end}")
    }
}

/// `text | comment(style='plain', decoration=..., prefix=..., postfix=..., ...)`.
fn comment(text: String, style: Option<String>, kwargs: Kwargs) -> Result<String, Error> {
    let style = CommentStyle::new(style.as_deref().unwrap_or("plain"), &kwargs)?;
    kwargs.assert_all_used()?;
    Ok(style.render(&text))
}

/// Python's `urlsplit` of a URL: (scheme, netloc, path, query, fragment).
fn split_url(url: &str) -> (String, String, String, String, String) {
    let (rest, fragment) = url.split_once('#').unwrap_or((url, ""));
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (scheme, rest) = match rest.split_once(':') {
        Some((scheme, after))
            if scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) =>
        {
            (scheme.to_ascii_lowercase(), after)
        }
        _ => (String::new(), rest),
    };
    let (netloc, path) = match rest.strip_prefix("//") {
        Some(after) => match after.find('/') {
            Some(slash) => (after[..slash].to_string(), after[slash..].to_string()),
            None => (after.to_string(), String::new()),
        },
        None => (String::new(), rest.to_string()),
    };
    (scheme, netloc, path, query.into(), fragment.into())
}

/// `url | urlsplit(query='')`: the URL's parts as Python's `urlsplit` names them, or one
/// of them.
fn urlsplit(url: String, query: Option<String>) -> Result<Value, Error> {
    let (scheme, netloc, path, query_part, fragment) = split_url(&url);
    let (userinfo, hostport) = match netloc.rsplit_once('@') {
        Some((userinfo, hostport)) => (Some(userinfo), hostport),
        None => (None, netloc.as_str()),
    };
    let (username, password) = match userinfo {
        Some(info) => match info.split_once(':') {
            Some((user, password)) => (Value::from(user), Value::from(password)),
            None => (Value::from(info), Value::from(())),
        },
        None => (Value::from(()), Value::from(())),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => (host, port.parse::<i64>().ok()),
        _ => (hostport, None),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let hostname = if host.is_empty() {
        Value::from(())
    } else {
        Value::from(host.to_lowercase())
    };
    let parts: Vec<(&str, Value)> = vec![
        ("fragment", Value::from(fragment)),
        ("hostname", hostname),
        ("netloc", Value::from(netloc.clone())),
        ("password", password),
        ("path", Value::from(path)),
        ("port", port.map(Value::from).unwrap_or(Value::from(()))),
        ("query", Value::from(query_part)),
        ("scheme", Value::from(scheme)),
        ("username", username),
    ];
    match query.filter(|q| !q.is_empty()) {
        Some(wanted) => parts
            .into_iter()
            .find(|(name, _)| *name == wanted)
            .map(|(_, value)| value)
            .ok_or_else(|| filter_error(format!("urlsplit: unknown URL component: {wanted}"))),
        None => Ok(Value::from_pairs(parts)),
    }
}

/// Python's strftime format as chrono's (`%f` is microseconds in Python), or an error for
/// a directive chrono does not know (chrono would panic while printing it).
fn chrono_format(python_format: &str) -> Result<String, Error> {
    let format = python_format.replace("%f", "%6f");
    let invalid = chrono::format::StrftimeItems::new(&format)
        .any(|item| matches!(item, chrono::format::Item::Error));
    if invalid {
        return Err(filter_error(format!(
            "invalid date format {python_format:?}"
        )));
    }
    Ok(format)
}

/// `format | strftime(second=None, utc=False)`: the time (now, or `second` since the
/// epoch) in the given format, local time unless `utc`.
fn strftime(format: String, second: Option<Value>, kwargs: Kwargs) -> Result<String, Error> {
    let utc: bool = kwargs.get::<Option<bool>>("utc")?.unwrap_or(false);
    let second: Option<Value> = match kwargs.get::<Option<Value>>("second")? {
        Some(second) => Some(second),
        None => second,
    };
    kwargs.assert_all_used()?;
    let format = chrono_format(&format)?;
    let when = match second.filter(|s| !s.is_none()) {
        Some(second) => {
            let epoch: f64 = second
                .as_str()
                .map(|s| s.trim().parse::<f64>().ok())
                .unwrap_or_else(|| f64::try_from(second.clone()).ok())
                .ok_or_else(|| filter_error(format!("Invalid value for epoch value ({second})")))?;
            chrono::DateTime::from_timestamp(epoch.floor() as i64, 0)
                .ok_or_else(|| filter_error(format!("Invalid value for epoch value ({epoch})")))?
        }
        None => chrono::Utc::now(),
    };
    Ok(if utc {
        when.naive_utc().format(&format).to_string()
    } else {
        when.with_timezone(&chrono::Local)
            .naive_local()
            .format(&format)
            .to_string()
    })
}

/// A point in time without a time zone, like Python's naive `datetime`.
#[derive(Debug, Clone)]
pub struct DateTime(chrono::NaiveDateTime);

impl Object for DateTime {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        use chrono::{Datelike, Timelike};
        let value = match key.as_str()? {
            "year" => self.0.year() as i64,
            "month" => self.0.month() as i64,
            "day" => self.0.day() as i64,
            "hour" => self.0.hour() as i64,
            "minute" => self.0.minute() as i64,
            "second" => self.0.second() as i64,
            "microsecond" => (self.0.nanosecond() / 1000) as i64,
            _ => return None,
        };
        Some(Value::from(value))
    }

    fn call_method(
        self: &Arc<Self>,
        _state: &mut State<'_, '_>,
        method: &str,
        args: &[Value],
    ) -> Result<Value, Error> {
        match method {
            "strftime" => {
                let format = args.first().and_then(Value::as_str).unwrap_or_default();
                Ok(Value::from(
                    self.0.format(&chrono_format(format)?).to_string(),
                ))
            }
            "timestamp" => {
                let local = self
                    .0
                    .and_local_timezone(chrono::Local)
                    .earliest()
                    .ok_or_else(|| filter_error("nonexistent local time"))?;
                Ok(Value::from(local.timestamp_micros() as f64 / 1e6))
            }
            "isoformat" => Ok(Value::from(self.python_text().replacen(' ', "T", 1))),
            _ => Err(Error::new(
                ErrorKind::UnknownMethod,
                format!("'datetime.datetime' object has no attribute '{method}'"),
            )),
        }
    }

    fn render(self: &Arc<Self>, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result
    where
        Self: Sized + 'static,
    {
        f.write_str(&self.python_text())
    }
}

impl DateTime {
    /// `str(datetime)`: microseconds only when there are some.
    fn python_text(&self) -> String {
        use chrono::Timelike;
        if self.0.nanosecond() / 1000 == 0 {
            self.0.format("%Y-%m-%d %H:%M:%S").to_string()
        } else {
            self.0.format("%Y-%m-%d %H:%M:%S%.6f").to_string()
        }
    }
}

/// `text | to_datetime(format='%Y-%m-%d %H:%M:%S')`, like Python's `strptime`: fields
/// the format lacks default to 1900-01-01 00:00:00.
fn to_datetime(text: String, format: Option<String>) -> Result<Value, Error> {
    let python_format = format.unwrap_or_else(|| "%Y-%m-%d %H:%M:%S".into());
    let format = chrono_format(&python_format)?;
    let parsed = chrono::NaiveDateTime::parse_from_str(&text, &format)
        .or_else(|_| {
            chrono::NaiveDate::parse_from_str(&text, &format)
                .map(|date| date.and_time(chrono::NaiveTime::MIN))
        })
        .or_else(|_| {
            chrono::NaiveTime::parse_from_str(&text, &format).map(|time| {
                chrono::NaiveDate::from_ymd_opt(1900, 1, 1)
                    .unwrap_or_default()
                    .and_time(time)
            })
        })
        .map_err(|_| {
            filter_error(format!(
                "time data '{text}' does not match format '{python_format}'"
            ))
        })?;
    Ok(Value::from_object(DateTime(parsed)))
}

/// `now(utc=False, fmt=None)`: the current time as a datetime, or formatted with `fmt`.
fn now(kwargs: Kwargs) -> Result<Value, Error> {
    let utc: bool = kwargs.get::<Option<bool>>("utc")?.unwrap_or(false);
    let format: Option<String> = kwargs.get("fmt")?;
    kwargs.assert_all_used()?;
    let current = if utc {
        chrono::Utc::now().naive_utc()
    } else {
        chrono::Local::now().naive_local()
    };
    match format {
        Some(format) => Ok(Value::from(
            current.format(&chrono_format(&format)?).to_string(),
        )),
        None => Ok(Value::from_object(DateTime(current))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(template: &str) -> String {
        let mut env = Environment::new();
        register(&mut env);
        env.render_str(template, ())
            .unwrap_or_else(|e| panic!("{template}: {e:#}"))
    }

    /// Seeded `random` picks what Python's `random.Random(seed)` picks.
    #[test]
    fn seeded_random_matches_python() {
        assert_eq!(render("{{ 60 | random(seed='web01') }}"), "22");
        assert_eq!(render("{{ 100 | random(seed=42) }}"), "81");
        assert_eq!(
            render("{{ 100 | random(start=10, step=5, seed=42) }}"),
            "25"
        );
        assert_eq!(render("{{ ['a','b','c','d'] | random(seed='x') }}"), "c");
        let unseeded: i64 = render("{{ 10 | random(start=5) }}").parse().unwrap_or(-1);
        assert!((5..10).contains(&unseeded));
    }

    /// The comment styles render as Ansible's `comment` filter does.
    #[test]
    fn comment_styles() {
        assert_eq!(render("{{ 'a\nb' | comment }}"), "#\n# a\n# b\n#");
        assert_eq!(render("{{ 'x' | comment('c') }}"), "//\n// x\n//");
        assert_eq!(
            render("{{ 'x' | comment('cblock') }}"),
            "/*\n *\n * x\n *\n */"
        );
        assert_eq!(render("{{ 'x' | comment('erlang') }}"), "%\n% x\n%");
        assert_eq!(
            render("{{ 'x' | comment('xml') }}"),
            "<!--\n -\n - x\n -\n-->"
        );
        assert_eq!(
            render("{{ 'x' | comment(decoration='; ', prefix='BEGIN', postfix='END') }}"),
            "BEGIN\n; x\nEND"
        );
    }

    /// urlsplit returns Python's parts, or one of them.
    #[test]
    fn urlsplit_parts() {
        let url = "'http://User:pw@Example.com:8080/a/b?q=1#frag'";
        assert_eq!(
            render(&format!("{{{{ {url} | urlsplit('hostname') }}}}")),
            "example.com"
        );
        assert_eq!(
            render(&format!("{{{{ {url} | urlsplit('port') }}}}")),
            "8080"
        );
        assert_eq!(
            render(&format!("{{{{ {url} | urlsplit('query') }}}}")),
            "q=1"
        );
        assert_eq!(
            render(&format!("{{{{ ({url} | urlsplit).netloc }}}}")),
            "User:pw@Example.com:8080"
        );
        assert_eq!(
            render("{{ 'https://example.com' | urlsplit('path') }}|{{ 'https://example.com' | urlsplit('username') }}"),
            "|None"
        );
    }

    /// Dates parse with a format, print like Python and format with strftime.
    #[test]
    fn dates() {
        assert_eq!(
            render("{{ '2024-02-29 13:05:09' | to_datetime }}"),
            "2024-02-29 13:05:09"
        );
        assert_eq!(
            render("{{ ('2024-02-29' | to_datetime('%Y-%m-%d')).day }}"),
            "29"
        );
        assert_eq!(
            render("{{ ('20240229' | to_datetime('%Y%m%d')).strftime('%d/%m/%Y') }}"),
            "29/02/2024"
        );
        assert_eq!(
            render("{{ '%Y-%m-%d %H:%M:%S' | strftime(0, utc=True) }}"),
            "1970-01-01 00:00:00"
        );
        assert_eq!(
            render("{{ '%Y' | strftime(second=86400 * 366, utc=True) }}"),
            "1971"
        );
        assert_eq!(render("{{ now(utc=True, fmt='%Y') | length }}"), "4");
        assert!(render("{{ now().year }}").parse::<i32>().is_ok());
    }
}
