//! SIGINT and SIGTERM for the long-running commands (`run`, `controller`).

/// SIGINT and SIGTERM, listened for from the start of a command to its end: a listener made
/// anew for each wait would lose a signal that arrived between two waits (once tokio handles a
/// signal, the default action no longer ends the process).
#[derive(Debug)]
pub struct Signals {
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    /// Starts listening.
    pub fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Signals {
                int: signal(SignalKind::interrupt()).ok(),
                term: signal(SignalKind::terminate()).ok(),
            }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    /// Resolves with the signal number (2 or 15) of the next SIGINT or SIGTERM.
    pub async fn recv(&mut self) -> i32 {
        #[cfg(unix)]
        {
            async fn next(s: &mut Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        if s.recv().await.is_none() {
                            std::future::pending::<()>().await;
                        }
                    }
                    None => std::future::pending::<()>().await,
                }
            }
            tokio::select! {
                _ = next(&mut self.int) => 2,
                _ = next(&mut self.term) => 15,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            2
        }
    }
}

impl Default for Signals {
    fn default() -> Self {
        Signals::new()
    }
}
