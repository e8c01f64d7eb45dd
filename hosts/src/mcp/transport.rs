//! stdio for the MCP server, with one guard in front of the SDK: every line from the client is
//! checked to be JSON before `rmcp` sees it. A line that is not JSON gets a JSON-RPC "Parse
//! error" (`-32700`, id `null`) and one longer than [`MAX_LINE`] an "Invalid Request" (`-32600`)
//! saying so; the server keeps serving either way. (The SDK itself drops unparsable lines
//! without a word.) Well-formed JSON that is not a valid message is answered by the SDK.
//!
//! stdout carries only protocol lines: the SDK's, copied whole, and these errors, never
//! interleaved.

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, DuplexStream};
use tokio::sync::mpsc;

/// The longest message accepted from the client, in bytes.
pub(crate) const MAX_LINE: usize = 16 << 20;

/// Buffer between the guard and the SDK.
const PIPE: usize = 1 << 20;

fn error_line(code: i64, message: &str) -> Vec<u8> {
    let mut v = serde_json::to_vec(&serde_json::json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": {"code": code, "message": message},
    }))
    .expect("json");
    v.push(b'\n');
    v
}

/// The SDK's side of the guarded stdio (a duplex stream), and the task pumping both ways.
/// The pump ends when stdin closes (the SDK then sees end of input) or stdout fails.
pub(crate) fn guarded<R, W>(stdin: R, stdout: W) -> (DuplexStream, tokio::task::JoinHandle<()>)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (ours, sdk) = tokio::io::duplex(PIPE);
    let (mut from_sdk, mut to_sdk) = tokio::io::split(ours);
    let (err_tx, mut err_rx) = mpsc::unbounded_channel::<Vec<u8>>();

    // Client → SDK.
    let reader = tokio::spawn(async move {
        let mut input = BufReader::with_capacity(1 << 16, stdin);
        let mut line = Vec::new();
        loop {
            line.clear();
            match read_line(&mut input, &mut line).await {
                Ok(Line::Eof) => break,
                Ok(Line::TooLong(n)) => {
                    tracing::warn!(bytes = n, "dropped an oversized message");
                    let _ = err_tx.send(error_line(
                        -32600,
                        &format!(
                            "Invalid Request: a message of {n} bytes or more exceeds the limit of {MAX_LINE} bytes; it was ignored"
                        ),
                    ));
                }
                Ok(Line::Full) => {
                    let body = line.trim_ascii();
                    if body.is_empty() {
                        continue;
                    }
                    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
                    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(body) {
                        tracing::debug!(error = %e, "not JSON");
                        let _ = err_tx.send(error_line(
                            -32700,
                            &format!("Parse error: the message is not valid JSON ({e})"),
                        ));
                        continue;
                    }
                    if to_sdk.write_all(body).await.is_err()
                        || to_sdk.write_all(b"\n").await.is_err()
                    {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading stdin failed");
                    break;
                }
            }
        }
        // End of input for the SDK.
        let _ = to_sdk.shutdown().await;
        drop(to_sdk);
    });

    // SDK → client, whole lines, with the guard's errors between them.
    let writer = tokio::spawn(async move {
        let mut out = stdout;
        let mut sdk_lines = BufReader::with_capacity(1 << 16, &mut from_sdk);
        let mut line = Vec::new();
        let mut errors_open = true;
        loop {
            tokio::select! {
                biased;
                r = sdk_lines.read_until(b'\n', &mut line) => {
                    match r {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            if out.write_all(&line).await.is_err() || out.flush().await.is_err() {
                                break;
                            }
                            line.clear();
                        }
                    }
                }
                e = err_rx.recv(), if errors_open => {
                    match e {
                        Some(bytes) => {
                            if out.write_all(&bytes).await.is_err() || out.flush().await.is_err() {
                                break;
                            }
                        }
                        None => errors_open = false,
                    }
                }
            }
        }
    });

    let pump = tokio::spawn(async move {
        let _ = reader.await;
        // Stdin is closed: what the SDK still writes goes out until it closes its side.
        let _ = writer.await;
    });
    (sdk, pump)
}

enum Line {
    Full,
    TooLong(usize),
    Eof,
}

/// One `\n`-terminated line, at most [`MAX_LINE`] bytes (the rest of a longer one is skipped).
async fn read_line<R: AsyncRead + Unpin>(
    input: &mut BufReader<R>,
    line: &mut Vec<u8>,
) -> std::io::Result<Line> {
    let mut skipped = 0usize;
    loop {
        let buf = input.fill_buf().await?;
        if buf.is_empty() {
            return Ok(if skipped > 0 {
                Line::TooLong(skipped)
            } else if line.is_empty() {
                Line::Eof
            } else {
                Line::Full
            });
        }
        let nl = buf.iter().position(|b| *b == b'\n');
        let take = nl.map_or(buf.len(), |i| i + 1);
        if skipped > 0 || line.len() + take > MAX_LINE {
            skipped += line.len() + take;
            line.clear();
        } else {
            line.extend_from_slice(&buf[..take]);
        }
        input.consume(take);
        if nl.is_some() {
            return Ok(if skipped > 0 {
                Line::TooLong(skipped)
            } else {
                Line::Full
            });
        }
    }
}
