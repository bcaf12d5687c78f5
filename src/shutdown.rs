//! Graceful shutdown: a drain signal every listener watches, a count of live connections,
//! and a hard deadline after which whatever is left is dropped.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};

/// The trigger side: flips the drain signal and waits for connections to finish.
#[derive(Clone)]
pub struct Shutdown {
    signal: watch::Sender<bool>,
    live: Arc<Live>,
}

struct Live {
    count: AtomicUsize,
    idle: Notify,
}

/// Held by every proxied connection; the drain waits for all of them to drop.
pub struct ConnectionGuard {
    live: Arc<Live>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if self.live.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.live.idle.notify_waiters();
        }
    }
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown {
            signal: watch::channel(false).0,
            live: Arc::new(Live {
                count: AtomicUsize::new(0),
                idle: Notify::new(),
            }),
        }
    }

    /// A receiver that turns `true` when draining starts.
    pub fn watch(&self) -> watch::Receiver<bool> {
        self.signal.subscribe()
    }

    /// Registers one live connection.
    pub fn connection(&self) -> ConnectionGuard {
        self.live.count.fetch_add(1, Ordering::AcqRel);
        ConnectionGuard {
            live: self.live.clone(),
        }
    }

    pub fn live_connections(&self) -> usize {
        self.live.count.load(Ordering::Acquire)
    }

    pub fn is_draining(&self) -> bool {
        *self.signal.borrow()
    }

    /// Stops accepting, then waits up to `deadline` for live connections to end. Returns how
    /// many were still open at the deadline.
    pub async fn drain(&self, deadline: Duration) -> usize {
        self.signal.send_replace(true);
        let wait = async {
            loop {
                let notified = self.live.idle.notified();
                if self.live_connections() == 0 {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(deadline, wait).await;
        self.live_connections()
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C). The handlers are installed by this call, not on
/// the first poll: the caller serves readiness before it awaits the future, and a SIGTERM
/// that arrives in between must start a drain, not kill the process (call it inside the
/// runtime).
pub fn termination_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Resolves once the drain signal of `rx` has turned true.
pub async fn draining(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|d| *d).await.map(|_| ());
}
