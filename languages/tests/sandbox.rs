//! The Docker sandbox itself: what a sandboxed session can and cannot do, how it fails (closed,
//! never on the host), and that its containers go away. The behaviour tests of every language
//! run in the sandbox too (`SPINDLE_TEST_LAUNCHER=docker`, see `common::launcher`).
//!
//! These need a Docker engine and the image (`scripts/sandbox-image.sh`; the README's test
//! command builds it). `SPINDLE_TEST_DOCKER=0` skips them on a machine without Docker.

mod common;
use common::{run, run_with, status as finished, stdout};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::query_parameters::{CreateContainerOptions, ListContainersOptions};
use spindle_kernel::launcher::docker::{LABEL_HOST, LABEL_SESSION};
use spindle_kernel::{
    DockerConfig, DockerLauncher, ExecOptions, Kernel, KernelConfig, KernelError, SandboxError,
    Session, SessionSpec,
};
use spindle_protocol::Outcome;

fn skip() -> bool {
    std::env::var("SPINDLE_TEST_DOCKER").is_ok_and(|v| v == "0")
}

fn image() -> String {
    std::env::var("SPINDLE_TEST_IMAGE").unwrap_or_else(|_| "spindle-sandbox:latest".into())
}

fn launcher_with(cfg: DockerConfig) -> DockerLauncher {
    DockerLauncher::connect(DockerConfig {
        image: image(),
        ..cfg
    })
    .expect("the Docker engine and the sandbox image (scripts/sandbox-image.sh)")
}

fn kernel_on(l: &DockerLauncher) -> Kernel {
    Kernel::new(KernelConfig {
        launcher: Arc::new(l.clone()),
        interrupt_grace: Duration::from_millis(500),
        ..KernelConfig::default()
    })
}

async fn session(kernel: &Kernel, lang: &str) -> Session {
    let language = spindle_languages::language(lang, &Default::default()).unwrap();
    kernel
        .create_session(SessionSpec::new(language))
        .await
        .expect("sandboxed session starts")
}

/// Ids of the containers (running or not) labelled with this session.
async fn containers_of(l: &DockerLauncher, session: &str) -> Vec<String> {
    let filters = HashMap::from([(
        "label".to_string(),
        vec![format!("{LABEL_SESSION}={session}")],
    )]);
    l.docker()
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_iter()
        .filter_map(|c| c.id)
        .collect()
}

async fn wait_no_containers(l: &DockerLauncher, session: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = containers_of(l, session).await;
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "containers left behind: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_is_locked_down() {
    if skip() {
        return;
    }
    std::env::set_var("SPINDLE_TEST_HOST_SECRET", "hunter2");
    let l = launcher_with(DockerConfig {
        memory: 256 << 20,
        pids: 64,
        ..Default::default()
    });
    let kernel = kernel_on(&l);
    let s = session(&kernel, "python").await;
    let code = r#"
import os, socket
print("uid", os.getuid())
print("secret", os.environ.get("SPINDLE_TEST_HOST_SECRET"))
print("capeff", [l.split()[1] for l in open("/proc/self/status") if l.startswith("CapEff")][0])
print("nnp", [l.split()[1] for l in open("/proc/self/status") if l.startswith("NoNewPrivs")][0])
print("nets", sorted(os.listdir("/sys/class/net")))
for path in ("/usr/evil", "/work/ok", "/tmp/ok"):
    try:
        open(path, "w").write("x"); print("write", path, "ok")
    except OSError as e:
        print("write", path, type(e).__name__)
try:
    socket.create_connection(("1.1.1.1", 53), timeout=2); print("net", "open")
except OSError as e:
    print("net", "blocked")
print("host", os.path.exists(os.environ.get("CARGO_MANIFEST_DIR", "/nonexistent")))
"#;
    let out = stdout(&run(&s, code).await);
    let line = |key: &str| {
        out.lines()
            .filter(|l| l.split(' ').next() == Some(key))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        !line("uid").ends_with(" 0") && !line("uid").is_empty(),
        "{out}"
    );
    assert_eq!(line("secret"), "secret None", "no host environment: {out}");
    assert_eq!(line("capeff"), "capeff 0000000000000000", "{out}");
    assert_eq!(line("nnp"), "nnp 1", "{out}");
    assert_eq!(line("nets"), "nets ['lo']", "{out}");
    assert_eq!(
        line("write"),
        "write /usr/evil OSError\nwrite /work/ok ok\nwrite /tmp/ok ok",
        "{out}"
    );
    assert_eq!(line("net"), "net blocked", "{out}");
    let _ = line("host");

    // The process limit holds: the 64th process cannot start, and the session lives on.
    let chunks = run(
        &s,
        "import subprocess\nps = []\ntry:\n    for i in range(200):\n        ps.append(subprocess.Popen(['sleep', '30']))\nexcept OSError as e:\n    print('stopped at', len(ps), type(e).__name__)\nfor p in ps: p.kill()",
    )
    .await;
    let text = stdout(&chunks);
    let n: usize = text
        .split_whitespace()
        .nth(2)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the pids limit did not stop the loop: {chunks:#?}"));
    assert!(n < 64, "{text}");

    // The memory limit holds: filling 1 GiB kills the process (no swap), and the session
    // gets a fresh one.
    let chunks = run(
        &s,
        "x = bytearray(1 << 30)\nx[::4096] = b'1' * (len(x) // 4096)",
    )
    .await;
    assert_eq!(
        finished(&chunks).outcome,
        Some(Outcome::Died),
        "{chunks:#?}"
    );
    let errors: Vec<(String, String)> = chunks
        .iter()
        .filter_map(|c| match &c.body {
            spindle_protocol::Body::Error { content: Some(e) } => {
                Some((e.name.clone(), e.value.clone()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        errors,
        [(
            "OutOfMemory".to_string(),
            "killed: out of memory (limit 256 MB)".to_string()
        )],
        "{chunks:#?}"
    );
    assert_eq!(stdout(&run(&s, "print(6 * 7)").await), "42\n");
    kernel.close_session(s.id()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_is_stopped_by_the_pids_limit_and_the_session_recovers() {
    if skip() {
        return;
    }
    let l = launcher_with(DockerConfig {
        pids: 48,
        ..Default::default()
    });
    let kernel = kernel_on(&l);
    let s = session(&kernel, "python").await;
    assert_eq!(stdout(&run(&s, "state = 'kept'").await), "");
    // Every process forks as fast as it can for two seconds (children too), then the first one
    // reports how many forks the limit refused and the most processes it saw at once.
    let bomb = r#"
import os, time
end = time.time() + 2
me = os.getpid()
refused = 0
def cgroup_pids():
    for p in ("/sys/fs/cgroup/pids/pids.current", "/sys/fs/cgroup/pids.current"):
        try:
            return int(open(p).read())
        except OSError:
            pass
    return -1
peak = 0
while time.time() < end:
    try:
        if os.fork() == 0:
            while time.time() < end:
                try:
                    os.fork()
                except OSError:
                    time.sleep(0.01)
            os._exit(0)
    except OSError:
        refused += 1
        time.sleep(0.01)
    peak = max(peak, cgroup_pids())
try:
    while True:
        os.wait()
except ChildProcessError:
    pass
print("refused", refused > 0, "peak", peak)
"#;
    let chunks = run_with(
        &s,
        bomb,
        ExecOptions {
            timeout: Some(Duration::from_secs(30)),
            ..ExecOptions::default()
        },
    )
    .await;
    let out = stdout(&chunks);
    let mut words = out.split_whitespace();
    assert_eq!(words.next(), Some("refused"), "{chunks:#?}");
    assert_eq!(words.next(), Some("True"), "the limit refused forks: {out}");
    let peak: i64 = words.nth(1).and_then(|n| n.parse().ok()).unwrap_or(-1);
    assert!(
        (1..=48).contains(&peak),
        "at most 48 processes at once: {out}"
    );
    // The session recovers: its state is there and it runs code.
    assert_eq!(stdout(&run(&s, "print(state, 6 * 7)").await), "kept 42\n");
    kernel.close_session(s.id()).await.unwrap();
}

#[tokio::test]
async fn session_info_shows_the_sandbox_and_its_limits() {
    if skip() {
        return;
    }
    let l = launcher_with(DockerConfig {
        memory: 300 << 20,
        cpus: 0.5,
        pids: 77,
        ..Default::default()
    });
    let kernel = kernel_on(&l);
    let s = session(&kernel, "bash").await;
    let info = s.info();
    let sb = info.sandbox.expect("a sandbox in session_info");
    assert_eq!(sb.kind, "docker");
    assert_eq!(sb.image, image());
    assert_eq!(sb.limits.memory, 300 << 20);
    assert_eq!(sb.limits.cpus, 0.5);
    assert_eq!(sb.limits.pids, 77);
    assert_eq!(sb.limits.network, "none");
    assert!(sb.limits.read_only_root);
    assert!(sb.api_version.is_some());
    // The limits are the container's, not just words: the cgroup says so.
    let out = stdout(&run(&s, "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max").await);
    assert_eq!(out.trim(), (300u64 << 20).to_string());
    kernel.close_session(s.id()).await.unwrap();
}

#[tokio::test]
async fn an_unreachable_engine_fails_closed() {
    let err = DockerLauncher::connect(DockerConfig {
        host: Some("unix:///nonexistent/docker.sock".into()),
        ..Default::default()
    })
    .unwrap_err();
    assert!(
        matches!(err, SandboxError::EngineUnreachable { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("/nonexistent/docker.sock"),
        "{err}"
    );
}

#[tokio::test]
async fn a_missing_image_says_how_to_build_it() {
    if skip() {
        return;
    }
    let err = DockerLauncher::connect(DockerConfig {
        image: "spindle-no-such-image:never".into(),
        ..Default::default()
    })
    .unwrap_err();
    assert!(matches!(err, SandboxError::ImageMissing { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("spindle-no-such-image:never"), "{msg}");
    assert!(msg.contains("scripts/sandbox-image.sh"), "{msg}");
}

#[tokio::test]
async fn a_missing_interpreter_names_it_and_the_image() {
    if skip() {
        return;
    }
    let mut cfg = DockerConfig::default();
    cfg.programs.insert("python".into(), "python9".into());
    let l = launcher_with(cfg);
    let kernel = kernel_on(&l);
    let language = spindle_languages::language("python", &Default::default()).unwrap();
    let err = kernel
        .create_session(SessionSpec::new(language))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, KernelError::StartFailed { .. }), "{err:?}");
    assert!(msg.contains("python9") && msg.contains(&image()), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_go_on_close_restart_timeout_and_death() {
    if skip() {
        return;
    }
    let l = launcher_with(DockerConfig::default());
    let kernel = kernel_on(&l);
    let s = session(&kernel, "python").await;
    let first = containers_of(&l, s.id()).await;
    assert_eq!(first.len(), 1);

    s.restart().await.unwrap();
    let second = containers_of(&l, s.id()).await;
    assert_eq!(second.len(), 1, "only the new container is left");
    assert_ne!(first, second);

    let chunks = run_with(
        &s,
        "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\ntime.sleep(60)",
        ExecOptions {
            timeout: Some(Duration::from_millis(300)),
            ..ExecOptions::default()
        },
    )
    .await;
    assert_eq!(finished(&chunks).outcome, Some(Outcome::Timeout));
    let third = containers_of(&l, s.id()).await;
    assert_eq!(third.len(), 1, "{third:?}");
    assert_ne!(third, second);

    let chunks = run(&s, "import os\nos._exit(3)").await;
    assert_eq!(
        finished(&chunks).outcome,
        Some(Outcome::Died),
        "{chunks:#?}"
    );
    let fourth = containers_of(&l, s.id()).await;
    assert_eq!(fourth.len(), 1, "{fourth:?}");
    assert_ne!(fourth, third);

    let id = s.id().to_string();
    kernel.close_session(&id).await.unwrap();
    wait_no_containers(&l, &id).await;
}

#[tokio::test]
async fn a_dead_hosts_containers_are_swept_at_start() {
    if skip() {
        return;
    }
    let l = launcher_with(DockerConfig::default());
    // A container as a host that is gone would have left it: this machine, a pid that is not
    // running with that start time.
    let mine: Vec<String> = l.instance().split('/').map(str::to_string).collect();
    let dead = format!("{}/{}/{}/1", mine[0], mine[1], std::process::id());
    let fake_session = format!("swept-{}", std::process::id());
    let labels = HashMap::from([
        (LABEL_HOST.to_string(), dead),
        (LABEL_SESSION.to_string(), fake_session.clone()),
    ]);
    l.docker()
        .create_container(
            None::<CreateContainerOptions>,
            bollard::models::ContainerCreateBody {
                image: Some(image()),
                cmd: Some(vec!["sleep".into(), "300".into()]),
                labels: Some(labels),
                network_disabled: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    // A live host's container (ours) must survive the sweep.
    let kernel = kernel_on(&l);
    let s = session(&kernel, "bash").await;
    assert_eq!(containers_of(&l, &fake_session).await.len(), 1);
    let again = launcher_with(DockerConfig::default());
    assert!(containers_of(&again, &fake_session).await.is_empty());
    assert_eq!(
        containers_of(&l, s.id()).await.len(),
        1,
        "a live host's container stays"
    );
    assert_eq!(stdout(&run(&s, "echo still here").await), "still here\n");
    kernel.close_session(s.id()).await.unwrap();
}
