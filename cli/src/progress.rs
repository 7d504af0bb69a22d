//! Progress where people wait (a rollout, a drain): on a terminal one status line that is
//! rewritten in place as it changes, with the time waited; elsewhere (a pipe, a CI log) a
//! plain line each time the status changes, never the same line twice.

use std::io::{IsTerminal, Write};
use std::time::Instant;

/// One wait's progress on stdout.
#[derive(Debug)]
pub struct Progress {
    terminal: bool,
    started: Instant,
    last: String,
    /// A status line is on the terminal, not yet ended.
    open: bool,
}

impl Progress {
    /// Progress on stdout, live when it is a terminal.
    pub fn new() -> Progress {
        Progress {
            terminal: std::io::stdout().is_terminal(),
            started: Instant::now(),
            last: String::new(),
            open: false,
        }
    }

    /// The status now. On a terminal the line is redrawn (with the seconds waited); else
    /// it is printed when it differs from the last one.
    pub fn update(&mut self, status: &str) {
        if self.terminal {
            let mut out = std::io::stdout().lock();
            let _ = write!(
                out,
                "\r\x1b[2K{status} ({}s)",
                self.started.elapsed().as_secs()
            );
            let _ = out.flush();
            self.open = true;
        } else if status != self.last {
            crate::output::say!("{status}");
        }
        self.last = status.to_string();
    }

    /// Ends the status line (if one is open) and prints `line`.
    pub fn finish(&mut self, line: &str) {
        if self.open {
            crate::output::say!();
            self.open = false;
        }
        crate::output::say!("{line}");
    }
}

impl Drop for Progress {
    /// A wait that ends in an error leaves no half line before the error's message.
    fn drop(&mut self) {
        if self.open {
            crate::output::say!();
        }
    }
}
