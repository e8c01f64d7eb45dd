//! A sandbox's work directory (`/work`, a tmpfs inside the container), reached through the
//! Engine API: each request is one exec of `/bin/sh` inside the container, as the session's
//! user, with the bytes on the exec's stdin or stdout (`docker cp` cannot reach a tmpfs, and an
//! exec works the same on a remote engine).
//!
//! The script walks the path one component at a time with `cd -P` from `/work`, refusing any
//! component that is a symlink, then checks that `pwd -P` is still below `/work`, so symlinks
//! the session's own code made (`ln -s /etc x`) are refused as they are for local sessions. An
//! upload goes to a fresh `mktemp` file in the target directory and is then linked (`create`)
//! or renamed (`overwrite`) into place, so the final component is never followed either. The
//! exec has exactly the rights of the session's own code (same user, namespaces, read-only root,
//! no capabilities), so even a race won against these checks reaches nothing the session could
//! not reach itself; the host's files are never involved.

use std::time::Duration;

use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::Docker;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use super::{block, WORKDIR};
use crate::files::{
    components, file_components, FileEntry, FileKind, FilesError, Listing, WorkDir, WriteMode,
    MAX_LIST_ENTRIES,
};

/// How long one file request may take inside the container.
const EXEC_TIMEOUT: Duration = Duration::from_secs(120);
/// Most bytes of listing output read.
const MAX_LIST_OUTPUT: usize = 16 << 20;

/// `$1` the operation, `$2` a size limit, the path's components after them. Exit statuses say
/// what went wrong (see [`status_error`]); stderr carries the detail.
const SCRIPT: &str = r#"op=$1; limit=$2; shift 2
fail() { printf '%s' "$2" >&2; exit "$1"; }
cd -P /work 2>/dev/null || fail 20 "the sandbox has no /work"
n=$#
if [ "$op" = list ]; then walk=$n; else walk=$((n - 1)); fi
i=0; shown=
for c do
  [ "$i" -lt "$walk" ] || break
  i=$((i + 1)); shown=${shown:+$shown/}$c
  if [ -L "$c" ]; then fail 21 "$shown"; fi
  if [ ! -e "$c" ]; then fail 22 "$shown"; fi
  if [ ! -d "$c" ]; then fail 23 "$shown"; fi
  cd -P -- "$c" 2>/dev/null || fail 24 "cannot enter $shown"
done
case $(pwd -P) in /work|/work/*) ;; *) fail 29 "$shown";; esac
last=; for last do :; done
shown=${shown:+$shown/}$last
case $op in
read)
  if [ -L "$last" ]; then fail 21 "$shown"; fi
  if [ ! -e "$last" ]; then fail 22 "$shown"; fi
  if [ -d "$last" ]; then fail 25 "a directory"; fi
  if [ ! -f "$last" ]; then fail 25 "not a regular file"; fi
  size=$(stat -c %s -- "$last") || fail 24 "cannot stat $shown"
  if [ "$size" -gt "$limit" ]; then fail 26 "$size"; fi
  exec cat -- "$last" ;;
create|overwrite)
  if [ -L "$last" ]; then fail 21 "$shown"; fi
  if [ -d "$last" ]; then fail 25 "a directory"; fi
  if [ -e "$last" ] && [ ! -f "$last" ]; then fail 25 "not a regular file"; fi
  if [ "$op" = create ] && [ -e "$last" ]; then fail 27 "$shown"; fi
  tmp=$(mktemp .spindle-upload-XXXXXXXX 2>&1) || fail 28 "cannot create a file in the directory: $tmp"
  if ! cat > "$tmp"; then rm -f -- "$tmp"; fail 28 "the write failed (is the work directory full or read-only?)"; fi
  chmod 644 "$tmp"
  if [ "$op" = create ]; then
    if ! ln -- "$tmp" "$last" 2>/dev/null; then
      rm -f -- "$tmp"
      if [ -L "$last" ]; then fail 21 "$shown"; fi
      if [ -e "$last" ]; then fail 27 "$shown"; fi
      fail 28 "cannot create $shown"
    fi
    rm -f -- "$tmp"
  else
    mv -f -- "$tmp" "$last" || { rm -f -- "$tmp"; fail 28 "cannot replace $shown"; }
  fi ;;
list)
  set -- * .[!.]* ..?*
  if stat --printf '' -- / >/dev/null 2>&1; then
    stat --printf '%f %s %Y %n\0' -- "$@" 2>/dev/null
  else
    for f do
      [ -e "$f" ] || [ -L "$f" ] || continue
      m=$(stat -c '%f %s %Y' -- "$f" 2>/dev/null) || continue
      printf '%s %s\0' "$m" "$f"
    done
  fi
  exit 0 ;;
esac
"#;

/// `/work` of one container.
#[derive(Debug, Clone)]
pub(super) struct ContainerWorkDir {
    pub docker: Docker,
    pub container: String,
    /// `uid:gid` of the session's processes.
    pub user: String,
}

struct ExecOutput {
    status: i64,
    stdout: Vec<u8>,
    stderr: String,
}

impl ContainerWorkDir {
    /// Run the script with `args`; `stdin` fed to it; at most `max_out` bytes of stdout kept
    /// (reading stops after one more).
    fn run(
        &self,
        op: &str,
        limit: u64,
        comps: Vec<String>,
        stdin: Option<Vec<u8>>,
        max_out: usize,
    ) -> Result<ExecOutput, FilesError> {
        let docker = self.docker.clone();
        let container = self.container.clone();
        let user = self.user.clone();
        let mut cmd = vec![
            "/bin/sh".to_string(),
            "-c".to_string(),
            SCRIPT.to_string(),
            "spindle-files".to_string(),
            op.to_string(),
            limit.to_string(),
        ];
        cmd.extend(comps);
        let fut = async move {
            let created = docker
                .create_exec(
                    &container,
                    CreateExecOptions {
                        cmd: Some(cmd),
                        user: Some(user),
                        working_dir: Some(WORKDIR.to_string()),
                        attach_stdin: Some(stdin.is_some()),
                        attach_stdout: Some(true),
                        attach_stderr: Some(true),
                        tty: Some(false),
                        env: Some(vec!["LC_ALL=C".to_string()]),
                        ..Default::default()
                    },
                )
                .await?;
            let started = docker
                .start_exec(
                    &created.id,
                    Some(StartExecOptions {
                        detach: false,
                        tty: false,
                        output_capacity: None,
                    }),
                )
                .await?;
            let StartExecResults::Attached { mut output, input } = started else {
                return Ok(None);
            };
            let feed = async move {
                let mut input = input;
                if let Some(data) = stdin {
                    // The script may refuse before it reads; then the write fails, and the exit
                    // status says why.
                    let _ = input.write_all(&data).await;
                }
                let _ = input.shutdown().await;
            };
            let collect = async {
                let mut out = Vec::new();
                let mut err = Vec::new();
                while let Some(item) = output.next().await {
                    match item? {
                        LogOutput::StdOut { message } => {
                            out.extend_from_slice(&message);
                            if out.len() > max_out {
                                break;
                            }
                        }
                        LogOutput::StdErr { message } if err.len() < 64 << 10 => {
                            err.extend_from_slice(&message);
                        }
                        _ => {}
                    }
                }
                Ok::<_, bollard::errors::Error>((out, err))
            };
            let ((), collected) = tokio::join!(feed, collect);
            let (out, err) = collected?;
            drop(output);
            if out.len() > max_out {
                // Cut short: the exit status does not matter.
                return Ok(Some(ExecOutput {
                    status: 0,
                    stdout: out,
                    stderr: String::new(),
                }));
            }
            let mut status = None;
            for _ in 0..50 {
                let i = docker.inspect_exec(&created.id).await?;
                if i.running != Some(true) {
                    status = i.exit_code;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok::<_, bollard::errors::Error>(Some(ExecOutput {
                status: status.unwrap_or(-1),
                stdout: out,
                stderr: String::from_utf8_lossy(&err).into_owned(),
            }))
        };
        let r = block(async move { tokio::time::timeout(EXEC_TIMEOUT, fut).await });
        match r {
            Err(_) => Err(FilesError::Unavailable(format!(
                "the file request did not finish in the sandbox within {} s",
                EXEC_TIMEOUT.as_secs()
            ))),
            Ok(Err(e)) => Err(FilesError::Unavailable(format!(
                "the sandbox's engine refused the file request: {e}"
            ))),
            Ok(Ok(None)) => Err(FilesError::Unavailable(
                "the sandbox's engine did not attach to the file request".into(),
            )),
            Ok(Ok(Some(o))) => Ok(o),
        }
    }
}

/// The error an exit status of [`SCRIPT`] stands for.
fn status_error(path: &str, o: &ExecOutput, limit: u64) -> FilesError {
    let detail = o.stderr.trim().to_string();
    match o.status {
        20 => FilesError::Unavailable(detail),
        21 => FilesError::Forbidden {
            path: path.into(),
            why: format!("{detail:?} is a symlink"),
        },
        29 => FilesError::Forbidden {
            path: path.into(),
            why: "it leads out of the work directory".into(),
        },
        22 => FilesError::NotFound { path: detail },
        23 => FilesError::NotADirectory { path: detail },
        25 => FilesError::NotAFile {
            path: path.into(),
            what: detail,
        },
        26 => FilesError::TooLarge {
            path: path.into(),
            size: detail.parse().unwrap_or(0),
            limit,
        },
        27 => FilesError::Exists { path: path.into() },
        s => FilesError::Io {
            path: path.into(),
            detail: if detail.is_empty() {
                format!("the file request failed in the sandbox (exit status {s})")
            } else {
                detail
            },
        },
    }
}

fn kind_of(mode: u32) -> FileKind {
    match mode & libc::S_IFMT {
        libc::S_IFREG => FileKind::File,
        libc::S_IFDIR => FileKind::Dir,
        libc::S_IFLNK => FileKind::Symlink,
        _ => FileKind::Other,
    }
}

/// `mode-hex size mtime name\0` records.
fn parse_listing(out: &[u8]) -> Listing {
    let mut entries = Vec::new();
    for rec in out.split(|&b| b == 0).filter(|r| !r.is_empty()) {
        let mut parts = rec.splitn(4, |&b| b == b' ');
        let (Some(mode), Some(size), Some(mtime), Some(name)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let (Some(mode), Some(size), Some(mtime)) = (
            std::str::from_utf8(mode)
                .ok()
                .and_then(|m| u32::from_str_radix(m, 16).ok()),
            std::str::from_utf8(size).ok().and_then(|s| s.parse().ok()),
            std::str::from_utf8(mtime).ok().and_then(|s| s.parse().ok()),
        ) else {
            continue;
        };
        let name = String::from_utf8_lossy(name).into_owned();
        if name == "." || name == ".." {
            continue;
        }
        entries.push(FileEntry {
            name,
            kind: kind_of(mode),
            size,
            mtime,
        });
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    let truncated = entries.len().saturating_sub(MAX_LIST_ENTRIES) as u64;
    entries.truncate(MAX_LIST_ENTRIES);
    Listing { entries, truncated }
}

impl WorkDir for ContainerWorkDir {
    fn root(&self) -> String {
        WORKDIR.to_string()
    }

    fn read(&self, path: &str, limit: u64) -> Result<Vec<u8>, FilesError> {
        let comps = file_components(path)?;
        let shown = comps.join("/");
        let max = usize::try_from(limit).unwrap_or(usize::MAX);
        let o = self.run("read", limit, comps, None, max)?;
        if o.stdout.len() > max {
            return Err(FilesError::TooLarge {
                path: shown,
                size: o.stdout.len() as u64,
                limit,
            });
        }
        if o.status != 0 {
            return Err(status_error(&shown, &o, limit));
        }
        Ok(o.stdout)
    }

    fn write(&self, path: &str, data: &[u8], mode: WriteMode) -> Result<(), FilesError> {
        let comps = file_components(path)?;
        let shown = comps.join("/");
        let op = match mode {
            WriteMode::Create => "create",
            WriteMode::Overwrite => "overwrite",
        };
        let o = self.run(op, 0, comps, Some(data.to_vec()), 64 << 10)?;
        if o.status != 0 {
            return Err(status_error(&shown, &o, 0));
        }
        Ok(())
    }

    fn list(&self, path: &str) -> Result<Listing, FilesError> {
        let comps = components(path)?;
        let shown = if comps.is_empty() {
            ".".to_string()
        } else {
            comps.join("/")
        };
        let o = self.run("list", 0, comps, None, MAX_LIST_OUTPUT)?;
        if o.status != 0 {
            return Err(status_error(&shown, &o, 0));
        }
        Ok(parse_listing(&o.stdout))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listings_parse() {
        let out = b"81a4 5 1700000000 a b.txt\x0041ed 4096 1700000001 dir\x00a1ff 4 1 link\x00\
11b6 0 2 fifo\x00garbage\x00";
        let l = parse_listing(out);
        let got: Vec<(&str, FileKind, u64)> = l
            .entries
            .iter()
            .map(|e| (e.name.as_str(), e.kind, e.size))
            .collect();
        assert_eq!(
            got,
            [
                ("a b.txt", FileKind::File, 5),
                ("dir", FileKind::Dir, 4096),
                ("fifo", FileKind::Other, 0),
                ("link", FileKind::Symlink, 4),
            ]
        );
        assert_eq!(l.entries[0].mtime, 1_700_000_000);
    }
}
