//! Minimal leveled logging to stderr, controlled by `KVX_LOG`
//! (`error`, `warn` (default), `info`, `debug`). kvxfer lives inside someone
//! else's process, so it stays quiet unless asked.

use once_cell::sync::Lazy;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Level {
    Error = 0,
    Warn = 1,
    Info = 2,
    Debug = 3,
}

static MAX_LEVEL: Lazy<Level> = Lazy::new(|| match std::env::var("KVX_LOG").as_deref() {
    Ok("error") => Level::Error,
    Ok("info") => Level::Info,
    Ok("debug") | Ok("trace") => Level::Debug,
    Ok("off") | Ok("none") => Level::Error,
    _ => Level::Warn,
});

pub fn enabled(level: Level) -> bool {
    level <= *MAX_LEVEL
}

pub fn write(level: Level, message: std::fmt::Arguments<'_>) {
    if enabled(level) {
        let tag = match level {
            Level::Error => "ERROR",
            Level::Warn => "WARN",
            Level::Info => "INFO",
            Level::Debug => "DEBUG",
        };
        eprintln!("[kvxfer {tag} pid {}] {message}", std::process::id());
    }
}

#[macro_export]
macro_rules! log_at {
    ($level:ident, $($arg:tt)*) => {
        $crate::core::log::write($crate::core::log::Level::$level, format_args!($($arg)*))
    };
}
