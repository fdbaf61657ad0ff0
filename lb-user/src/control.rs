//! The control socket: one JSON request per line over a root-only Unix
//! socket, one JSON reply per line. The CLI is its only client. What the
//! requests and replies hold is in `api`.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::{
        fs::{DirBuilderExt as _, FileTypeExt as _, PermissionsExt as _},
        net::UnixStream,
    },
    path::Path,
    sync::atomic::AtomicU64,
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _},
    net::UnixListener,
    sync::{mpsc, oneshot},
};

pub use crate::api::Request;
use crate::conncap::ConnectionCap;

/// The envelope of every reply: `result` holds the request's reply type
/// (see `api::Request`), `error` says why there is none.
#[derive(Debug, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Reply {
    pub fn ok(result: impl Serialize) -> Self {
        match serde_json::to_value(result) {
            Ok(v) => Self {
                ok: true,
                result: Some(v),
                error: None,
            },
            Err(e) => Self::err(format!("cannot encode the reply: {e}")),
        }
    }

    pub fn err(msg: impl Into<String>) -> Self {
        Self {
            ok: false,
            result: None,
            error: Some(msg.into()),
        }
    }
}

/// A request on its way to the daemon's main loop, with where to answer.
pub type Envelope = (Request, oneshot::Sender<Reply>);

/// Binds the control socket (mode 0600: root only). Refuses if another
/// daemon answers on it; removes a stale socket file otherwise.
///
/// The socket is created under umask 0177, so it is root-only from the
/// moment it exists: a chmod after bind(2) would leave a window in which,
/// under a lax umask, anyone can connect and keep the connection. Folders it
/// creates are 0755 whatever the umask, and a folder others may write to is
/// refused: they could replace the socket with their own.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .with_context(|| format!("create {}", dir.display()))?;
        if let Some(why) = unsafe_socket_dir(dir) {
            bail!("control socket {}: {why}", path.display());
        }
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        // Only a socket is ours to replace: a file or folder at that path
        // (a typo in control_socket) must not be deleted.
        if !meta.file_type().is_socket() {
            bail!(
                "control socket {} exists and is not a socket; choose another control_socket",
                path.display()
            );
        }
        if UnixStream::connect(path).is_ok() {
            bail!(
                "another stickylb daemon is running (it answers on {}); stop it first",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("remove stale socket {}", path.display()))?;
    }
    let listener = {
        let _umask = Umask::set(0o177);
        UnixListener::bind(path)
    }
    .with_context(|| format!("bind control socket {}", path.display()))?;
    // Already 0600; said again in case the file system ignores the umask.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Why a socket in `dir` could be replaced by someone else: a folder that
/// group or others may write to, without the sticky bit that keeps them
/// from removing or renaming what they do not own (/tmp has it).
pub fn unsafe_socket_dir(dir: &Path) -> Option<String> {
    let mode = std::fs::metadata(dir).ok()?.permissions().mode();
    (mode & 0o022 != 0 && mode & 0o1000 == 0).then(|| {
        format!(
            "its folder {} is writable by others (mode {:o}), who could replace the socket \
             with their own; run chmod go-w {0} or choose a root-only folder",
            dir.display(),
            mode & 0o7777
        )
    })
}

/// The process umask for as long as this lives. The umask is process-wide:
/// hold it only around the one call that creates a file.
struct Umask(libc::mode_t);

impl Umask {
    fn set(mask: libc::mode_t) -> Self {
        // SAFETY: umask(2) cannot fail.
        Self(unsafe { libc::umask(mask) })
    }
}

impl Drop for Umask {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::umask(self.0) };
    }
}

/// Longest request line accepted, in bytes.
const MAX_REQUEST: u64 = 64 * 1024;
/// Control connections served at once; more are closed at once. The CLI
/// opens one per command, so this only bounds what a stuck or hostile
/// client holds.
const MAX_CONTROL_CONNECTIONS: usize = 32;
/// The CLI sends its request as soon as it is connected.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// A client that does not read its reply is not waited for longer.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// Control connections closed at once because the cap was reached.
pub(crate) static REFUSED: AtomicU64 = AtomicU64::new(0);

/// An accept error (e.g. out of file descriptors) persists until something
/// changes: log it and wait a little instead of retrying in a tight loop.
pub async fn accept_failed(what: &str, e: &std::io::Error) {
    log::warn!("{what}: accept failed: {e}; retrying in 100 ms");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Accepts connections and forwards each request to the main loop.
pub async fn serve(listener: UnixListener, to_main: mpsc::Sender<Envelope>) {
    let mut cap = ConnectionCap::new("control socket", MAX_CONTROL_CONNECTIONS, &REFUSED);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                accept_failed("control socket", &e).await;
                continue;
            }
        };
        let Some(permit) = cap.admit() else {
            continue;
        };
        let to_main = to_main.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let (r, mut w) = stream.into_split();
            let mut line = String::new();
            // Requests are one short JSON line; a peer that sends more is
            // cut off instead of filling the daemon's memory.
            let mut reader = tokio::io::BufReader::new(r.take(MAX_REQUEST));
            let reply = match tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line))
                .await
            {
                Ok(Ok(_)) => match serde_json::from_str::<Request>(&line) {
                    Ok(req) => {
                        let (tx, rx) = oneshot::channel();
                        if to_main.send((req, tx)).await.is_err() {
                            Reply::err("the daemon is shutting down")
                        } else {
                            rx.await
                                .unwrap_or_else(|_| Reply::err("the daemon dropped the request"))
                        }
                    }
                    Err(e) => Reply::err(format!("bad request: {e}")),
                },
                _ => Reply::err("no request received"),
            };
            if let Ok(mut text) = serde_json::to_string(&reply) {
                text.push('\n');
                let _ = tokio::time::timeout(REPLY_TIMEOUT, w.write_all(text.as_bytes())).await;
            }
        });
    }
}

/// Sends one request to the daemon and returns its result, or its error as
/// an error.
pub fn call(socket: &Path, req: &Request) -> anyhow::Result<serde_json::Value> {
    let stream = UnixStream::connect(socket).map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::PermissionDenied => "the control socket is root-only: run as root",
            _ => "is the daemon running? start it with `stickylb run -c FILE`",
        };
        anyhow::anyhow!(
            "cannot reach the stickylb daemon at {} ({e}); {hint}",
            socket.display()
        )
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    exchange(stream, socket, req)
}

/// One request and its reply on a connected stream. A daemon that closes
/// the connection at once (at its connection cap, or shutting down) is a
/// failure, said with the socket: the request was not carried out.
fn exchange(
    mut stream: UnixStream,
    socket: &Path,
    req: &Request,
) -> anyhow::Result<serde_json::Value> {
    let mut line = serde_json::to_string(req)?;
    line.push('\n');
    let closed = || {
        format!(
            "the stickylb daemon at {} closed the connection (at its connection limit, or \
             shutting down): nothing was done; try again",
            socket.display()
        )
    };
    stream.write_all(line.as_bytes()).with_context(closed)?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .with_context(|| format!("reading the daemon's reply on {}", socket.display()))?;
    if answer.is_empty() {
        bail!("{}", closed());
    }
    let reply: Reply =
        serde_json::from_str(&answer).with_context(|| format!("malformed reply {answer:?}"))?;
    if reply.ok {
        Ok(reply.result.unwrap_or(serde_json::Value::Null))
    } else {
        bail!("{}", reply.error.unwrap_or_else(|| "unknown error".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_daemon_closing_on_us_is_an_error_naming_the_socket() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        drop(theirs);
        let e = exchange(ours, Path::new("/run/x.sock"), &Request::Status).unwrap_err();
        assert!(format!("{e:#}").contains("/run/x.sock"), "{e:#}");
    }

    #[test]
    fn requests_round_trip_as_json() {
        let reqs = [
            Request::Status,
            Request::Lookup {
                client: std::net::Ipv4Addr::new(10, 0, 0, 1).into(),
                vip: Some("web".into()),
            },
            Request::BackendDrain {
                vip: "web".into(),
                backend: "10.0.0.2:80".parse().unwrap(),
                drained: true,
            },
        ];
        for r in reqs {
            let text = serde_json::to_string(&r).unwrap();
            assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), r);
        }
        let text = serde_json::to_string(&Request::Reload).unwrap();
        assert_eq!(text, r#"{"cmd":"reload"}"#);
    }

    #[tokio::test]
    async fn server_answers_and_client_reports_errors() {
        let dir = std::env::temp_dir().join(format!("stickylb-ctl-test-{}", std::process::id()));
        let sock = dir.join("s.sock");
        let listener = bind(&sock).unwrap();
        assert!(
            bind(&sock)
                .unwrap_err()
                .to_string()
                .contains("another stickylb daemon")
        );
        let (tx, mut rx) = mpsc::channel::<Envelope>(4);
        tokio::spawn(serve(listener, tx));
        tokio::spawn(async move {
            while let Some((req, reply)) = rx.recv().await {
                let _ = reply.send(match req {
                    Request::Status => Reply::ok("fine"),
                    _ => Reply::err("no VIP named \"nope\""),
                });
            }
        });
        let s = sock.clone();
        let ok = tokio::task::spawn_blocking(move || call(&s, &Request::Status))
            .await
            .unwrap();
        assert_eq!(ok.unwrap(), serde_json::json!("fine"));
        let s = sock.clone();
        let err = tokio::task::spawn_blocking(move || call(&s, &Request::Reload))
            .await
            .unwrap();
        assert_eq!(err.unwrap_err().to_string(), "no VIP named \"nope\"");
        let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
        let gone = call(&sock, &Request::Status).unwrap_err().to_string();
        assert!(gone.contains("cannot reach the stickylb daemon"), "{gone}");
    }
}

#[cfg(test)]
mod serve_tests;
