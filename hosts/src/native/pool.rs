//! The warm pool (`--warm N`): pre-started sessions per language, so that creating a session
//! with default options answers in milliseconds. A background task per language refills its
//! pool one session at a time (never hogging the machine), backing off when a language cannot
//! start at all.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use spindle_kernel::{Kernel, Language, Session, SessionSpec};
use spindle_protocol::SessionState;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

struct LangPool {
    language: Arc<dyn Language>,
    want: usize,
    ready: Mutex<VecDeque<Session>>,
    wake: Notify,
}

/// Pre-started sessions, by canonical language name.
#[derive(Default)]
pub struct Pool {
    langs: Vec<(String, Arc<LangPool>)>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field(
                "languages",
                &self.langs.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Pool {
    /// Start filling `want` sessions for each language.
    pub fn start(kernel: Arc<Kernel>, languages: Vec<Arc<dyn Language>>, want: usize) -> Self {
        let mut pool = Pool::default();
        if want == 0 {
            return pool;
        }
        let mut tasks = Vec::new();
        for language in languages {
            let lp = Arc::new(LangPool {
                language: language.clone(),
                want,
                ready: Mutex::new(VecDeque::new()),
                wake: Notify::new(),
            });
            tasks.push(tokio::spawn(refill(kernel.clone(), lp.clone())));
            pool.langs.push((language.name().to_string(), lp));
        }
        pool.tasks = Mutex::new(tasks);
        pool
    }

    /// A ready session of this language, if the pool has one; the pool refills behind it.
    pub fn take(&self, language: &str) -> Option<Session> {
        let (_, lp) = self.langs.iter().find(|(n, _)| n == language)?;
        let got = {
            let mut ready = lp.ready.lock().expect("pool");
            let mut got = None;
            while let Some(s) = ready.pop_front() {
                if s.info().state != SessionState::Closed {
                    got = Some(s);
                    break;
                }
            }
            got
        };
        lp.wake.notify_one();
        got
    }

    /// How many sessions are ready, per language.
    pub fn ready(&self) -> Vec<(String, usize)> {
        self.langs
            .iter()
            .map(|(n, lp)| (n.clone(), lp.ready.lock().expect("pool").len()))
            .collect()
    }

    /// Stop refilling and close every pooled session (their processes are killed).
    pub async fn shutdown(&self) {
        let tasks: Vec<JoinHandle<()>> = std::mem::take(&mut *self.tasks.lock().expect("pool"));
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            // A start cut short drops its half-started process, which kills it.
            let _ = t.await;
        }
        let mut all = Vec::new();
        for (_, lp) in &self.langs {
            all.extend(lp.ready.lock().expect("pool").drain(..));
        }
        futures::future::join_all(all.iter().map(|s| s.close())).await;
    }
}

async fn refill(kernel: Arc<Kernel>, lp: Arc<LangPool>) {
    let mut backoff = Duration::from_secs(1);
    loop {
        while lp.ready.lock().expect("pool").len() < lp.want {
            match kernel
                .start_detached(SessionSpec::new(lp.language.clone()))
                .await
            {
                Ok(s) => {
                    lp.ready.lock().expect("pool").push_back(s);
                    backoff = Duration::from_secs(1);
                }
                Err(e) => {
                    tracing::warn!(language = lp.language.name(), error = %e,
                        retry_in_s = backoff.as_secs(), "warm pool: cannot start a session");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                }
            }
        }
        lp.wake.notified().await;
    }
}
