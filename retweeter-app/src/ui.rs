//! Terminal output: logs on stderr, progress bars (only when stdout is a
//! terminal), result lines on stdout, and errors with their whole cause chain.

use std::io::{IsTerminal, Write};
use std::sync::OnceLock;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// All progress bars live here, so that log lines and result lines can be
/// printed without tearing a bar.
fn bars() -> &'static MultiProgress {
    static BARS: OnceLock<MultiProgress> = OnceLock::new();
    BARS.get_or_init(|| {
        if std::io::stdout().is_terminal() && std::io::stderr().is_terminal() {
            MultiProgress::with_draw_target(ProgressDrawTarget::stderr())
        } else {
            MultiProgress::with_draw_target(ProgressDrawTarget::hidden())
        }
    })
}

/// Logs at warn and above by default; `-v` info, `-vv` debug, `-vvv` trace.
/// `RUST_LOG` (e.g. `retweeter_app=debug,tokio_postgres=info`) overrides.
pub fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => LevelFilter::WARN,
        1 => LevelFilter::INFO,
        2 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    };
    let from_env = std::env::var("RUST_LOG").ok().and_then(|s| s.parse::<Targets>().ok());
    let filter = from_env.unwrap_or_else(|| {
        // Our own crate at the chosen level; dependencies one step quieter.
        let deps = match verbose {
            0 | 1 => LevelFilter::WARN,
            2 => LevelFilter::INFO,
            _ => LevelFilter::DEBUG,
        };
        Targets::new().with_default(deps).with_target("retweeter_app", level)
    });
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(BarAwareStderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(verbose >= 2);
    let registry = tracing_subscriber::registry().with(filter);
    if verbose >= 2 {
        registry.with(fmt).init();
    } else {
        registry.with(fmt.without_time()).init();
    }
}

/// A stderr writer that hides the progress bars while a log line is written.
struct BarAwareStderr;

struct BarAwareWriter;

impl Write for BarAwareWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        bars().suspend(|| std::io::stderr().write_all(buf))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> MakeWriter<'a> for BarAwareStderr {
    type Writer = BarAwareWriter;
    fn make_writer(&'a self) -> Self::Writer {
        BarAwareWriter
    }
}

/// Prints a result line on stdout (above any progress bar).
pub fn out(line: impl AsRef<str>) {
    let line = line.as_ref();
    bars().suspend(|| {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{line}");
        let _ = stdout.flush();
    });
}

/// Prints an error line on stderr (above any progress bar), whatever the log level.
pub fn err_line(line: impl AsRef<str>) {
    let line = line.as_ref();
    bars().suspend(|| {
        let _ = writeln!(std::io::stderr().lock(), "{line}");
    });
}

/// A progress bar over `len` steps, drawn on stderr when stdout is a terminal.
pub fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = bars().add(ProgressBar::new(len));
    let template = format!("{{spinner}} [{{bar:30}}] {{pos}}/{{len}} {what} {{msg}}");
    bar.set_style(
        ProgressStyle::with_template(&template).unwrap_or_else(|_| ProgressStyle::default_bar()).progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// A spinner with a message, drawn on stderr when stdout is a terminal.
pub fn spinner() -> ProgressBar {
    let bar = bars().add(ProgressBar::new_spinner());
    bar.set_style(ProgressStyle::with_template("{spinner} {msg}").unwrap_or_else(|_| ProgressStyle::default_spinner()));
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// `1 poll`, `2 polls`: a number and the noun that agrees with it.
pub fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// `200ms`, `30s`, `1.5s`, `5m`, `2h`.
pub fn human_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// The error's messages, outermost first, with causes that merely repeat
/// part of the previous message left out (tokio-postgres and others
/// include their source in their own message).
pub fn chain(err: &anyhow::Error) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for cause in err.chain() {
        let msg = cause.to_string();
        // tokio-postgres says only "db error" and keeps the server's message in its source.
        if msg.is_empty() || (msg == "db error" && cause.source().is_some()) {
            continue;
        }
        if let Some(prev) = out.last()
            && prev.contains(&msg)
        {
            continue;
        }
        out.push(msg);
    }
    out
}

/// The cause chain on one line: `outer: inner: innermost`.
pub fn one_line(err: &anyhow::Error) -> String {
    chain(err).join(": ")
}

/// Prints `error: ...` and one `caused by: ...` line per cause.
pub fn print_error(err: &anyhow::Error) {
    let mut lines = chain(err).into_iter();
    let mut text = format!("error: {}", lines.next().unwrap_or_default());
    for cause in lines {
        text.push_str("\n  caused by: ");
        text.push_str(&cause);
    }
    err_line(text);
}

/// The exit code of a command stopped by Ctrl-C or SIGTERM (128 + SIGINT).
pub const INTERRUPTED: u8 = 130;

/// Resolves at the first Ctrl-C or SIGTERM (never, if neither can be
/// watched). From then on the process handles those signals itself, so a
/// second one exits at once, without cleaning up.
pub async fn interrupted() {
    signal().await;
    tokio::spawn(async {
        signal().await;
        err_line("interrupted again: exiting without cleaning up");
        std::process::exit(i32::from(INTERRUPTED));
    });
}

/// Says that the command was interrupted and is cleaning up; its exit code.
pub fn stopped() -> std::process::ExitCode {
    err_line("interrupted: cleaning up, then stopping (interrupt again to exit at once)");
    std::process::ExitCode::from(INTERRUPTED)
}

/// Ctrl-C or SIGTERM.
async fn signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                () = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => ctrl_c.await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_agree_with_their_noun() {
        assert_eq!(count(0, "poll", "polls"), "0 polls");
        assert_eq!(count(1, "poll", "polls"), "1 poll");
        assert_eq!(count(2, "other retweeter", "other retweeters"), "2 other retweeters");
    }

    #[test]
    fn chain_skips_repeated_tails() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let err =
            anyhow::Error::new(io).context("error connecting to server: connection refused").context("poll failed");
        assert_eq!(chain(&err), ["poll failed", "error connecting to server: connection refused"]);
    }
}
