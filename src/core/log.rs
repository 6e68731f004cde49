//! Minimal leveled logging to stderr, controlled by `KVX_LOG`
//! (`error`, `warn` (default), `info`, `debug`). kvxfer lives inside someone
//! else's process, so it stays quiet unless asked.
//!
//! `KVX_LOG_FORMAT=json` writes one JSON object per line (`time`, `level`,
//! `pid`, `event`, `agent`, `peer`, `status`, `message` and the event's own
//! fields) for log collectors; the default stays human-readable.

use once_cell::sync::Lazy;
use serde_json::{Map, Value};
use std::io::Write;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Level {
    Error = 0,
    Warn = 1,
    Info = 2,
    Debug = 3,
}

impl Level {
    fn name(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }
}

static MAX_LEVEL: Lazy<Level> = Lazy::new(|| match std::env::var("KVX_LOG").as_deref() {
    Ok("error") => Level::Error,
    Ok("info") => Level::Info,
    Ok("debug") | Ok("trace") => Level::Debug,
    Ok("off") | Ok("none") => Level::Error,
    _ => Level::Warn,
});

static JSON: Lazy<bool> = Lazy::new(|| std::env::var("KVX_LOG_FORMAT").is_ok_and(|v| v == "json"));

pub fn enabled(level: Level) -> bool {
    level <= *MAX_LEVEL
}

/// One structured log event: what happened (`event`, a stable snake_case
/// name), where (`agent`, `peer`), the status when it is a failure, and any
/// further fields.
#[derive(Default)]
pub struct Event<'a> {
    pub event: &'a str,
    pub agent: Option<&'a str>,
    pub peer: Option<&'a str>,
    pub status: Option<&'a str>,
    pub fields: Vec<(&'a str, Value)>,
}

pub fn write(level: Level, message: std::fmt::Arguments<'_>) {
    if enabled(level) {
        emit(level, &Event { event: "message", ..Event::default() }, message);
    }
}

/// Log a structured event (at `level`, if enabled).
pub fn event(level: Level, event: &Event<'_>, message: std::fmt::Arguments<'_>) {
    if enabled(level) {
        emit(level, event, message);
    }
}

fn emit(level: Level, event: &Event<'_>, message: std::fmt::Arguments<'_>) {
    let line = if *JSON { json_line(level, event, &message.to_string()) } else { human_line(level, event, message) };
    // One write per line, so lines from several threads never interleave.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

fn human_line(level: Level, event: &Event<'_>, message: std::fmt::Arguments<'_>) -> String {
    let mut context = String::new();
    for (key, value) in [("agent", event.agent), ("peer", event.peer), ("status", event.status)] {
        if let Some(v) = value {
            context.push_str(&format!(" {key}={v}"));
        }
    }
    let context = if context.is_empty() { String::new() } else { format!(" [{}]", context.trim_start()) };
    format!("[kvxfer {} pid {}] {message}{context}\n", level.name().to_uppercase(), std::process::id())
}

/// The JSON form of one event, newline-terminated.
pub fn json_line(level: Level, event: &Event<'_>, message: &str) -> String {
    let mut object = Map::new();
    object.insert("time".into(), Value::String(rfc3339_now()));
    object.insert("level".into(), Value::String(level.name().into()));
    object.insert("pid".into(), Value::from(std::process::id()));
    object.insert("event".into(), Value::String(event.event.into()));
    for (key, value) in [("agent", event.agent), ("peer", event.peer), ("status", event.status)] {
        if let Some(v) = value {
            object.insert(key.into(), Value::String(v.into()));
        }
    }
    object.insert("message".into(), Value::String(message.into()));
    for (key, value) in &event.fields {
        object.entry(*key).or_insert_with(|| value.clone());
    }
    let mut line = Value::Object(object).to_string();
    line.push('\n');
    line
}

/// Now as RFC 3339 UTC with milliseconds, e.g. `2026-12-02T01:02:03.456Z`.
fn rfc3339_now() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let (days, secs) = ((now.as_secs() / 86_400) as i64, now.as_secs() % 86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        now.subsec_millis()
    )
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// A failure a loop may meet on every round (a poller's): logged when it
/// first happens or changes, not once per round.
#[derive(Default)]
pub struct OnChange(parking_lot::Mutex<Option<String>>);

impl OnChange {
    /// Log `failure` unless it is the one logged last; `None` (a round that went well) clears it.
    pub fn report(&self, level: Level, failure: Option<String>) {
        let mut last = self.0.lock();
        if *last != failure {
            if let Some(text) = &failure {
                write(level, format_args!("{text}"));
            }
            *last = failure;
        }
    }
}

#[macro_export]
macro_rules! log_at {
    ($level:ident, $($arg:tt)*) => {
        $crate::core::log::write($crate::core::log::Level::$level, format_args!($($arg)*))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_failures_are_remembered_until_they_change() {
        let seen = OnChange::default();
        seen.report(Level::Debug, Some("a".into()));
        assert_eq!(seen.0.lock().as_deref(), Some("a"));
        seen.report(Level::Debug, None);
        assert_eq!(*seen.0.lock(), None);
    }

    #[test]
    fn dates_are_civil() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn json_lines_are_one_object_with_the_context() {
        let e = Event {
            event: "transfer_failed",
            agent: Some("prefill0"),
            peer: Some("decode\"1"),
            status: Some("KVX_ERR_PEER"),
            fields: vec![("bytes", Value::from(4096u64))],
        };
        let line = json_line(Level::Error, &e, "transfer failed:\n peer gone");
        assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["level"], "error");
        assert_eq!(v["event"], "transfer_failed");
        assert_eq!(v["peer"], "decode\"1");
        assert_eq!(v["status"], "KVX_ERR_PEER");
        assert_eq!(v["bytes"], 4096);
        assert!(v["time"].as_str().unwrap().ends_with('Z'));
    }
}
