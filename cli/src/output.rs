//! Tables and JSON for read commands.

use std::io::Write;

use comfy_table::{Table, presets};
use serde::Serialize;

/// `println!` for the CLI's output: when stdout is closed early (`drover events | head`),
/// the command ends quietly with success, as Unix tools do, instead of panicking.
macro_rules! say {
    () => { $crate::output::line(format_args!("")) };
    ($($arg:tt)*) => { $crate::output::line(format_args!($($arg)*)) };
}
pub(crate) use say;

/// Writes one line to stdout; see [`say`].
pub fn line(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{args}").and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        // Anything else (a full disk) is worth saying, once, on stderr.
        eprintln!("error: writing to stdout: {e}");
        std::process::exit(1);
    }
}

/// Output format of read commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    Table,
    /// JSON for programs.
    Json,
}

/// A borderless table with the given header, kubectl-style.
pub fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_style(presets::NOTHING);
    t.set_header(header.iter().copied());
    t
}

/// Prints `value` as pretty JSON.
pub fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    say!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Prints a table, trimming the padding comfy-table leaves at line ends.
pub fn print_table(table: &Table) {
    for line in table.to_string().lines() {
        say!("{}", line.trim_end());
    }
}

/// A short age like kubectl's: 45s, 12m, 3h, 2d.
pub fn age(since_unix_ms: u64, now_unix_ms: u64) -> String {
    if since_unix_ms == 0 {
        return "-".into();
    }
    let secs = now_unix_ms.saturating_sub(since_unix_ms) / 1000;
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages() {
        assert_eq!(age(0, 5000), "-");
        assert_eq!(age(1000, 46_000), "45s");
        assert_eq!(age(1, 1 + 12 * 60_000), "12m");
        assert_eq!(age(1, 1 + 3 * 3_600_000), "3h");
        assert_eq!(age(1, 1 + 50 * 3_600_000), "2d");
    }
}
