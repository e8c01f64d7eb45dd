//! The JSON Schemas under `schemas/` are generated from the native protocol's Rust types
//! (`spindle_protocol::native::schemas`). This test fails when the committed files differ from
//! what the types generate, so the schemas can never drift from the code.
//!
//! After changing a message type, regenerate them with:
//!
//! ```sh
//! SPINDLE_BLESS=1 cargo test -p spindle --test schemas
//! ```

use std::path::PathBuf;

fn schema_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("schemas")
}

fn render(schema: &serde_json::Value) -> String {
    let mut text = serde_json::to_string_pretty(schema).expect("a schema serialises");
    text.push('\n');
    text
}

#[test]
fn committed_schemas_match_the_types() {
    let dir = schema_dir();
    let bless = std::env::var_os("SPINDLE_BLESS").is_some_and(|v| v == "1");
    let generated = spindle_protocol::native::schemas();
    let mut stale = Vec::new();
    for (name, schema) in &generated {
        let path = dir.join(name);
        let want = render(schema);
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        if have != want {
            if bless {
                std::fs::create_dir_all(&dir).expect("create schemas/");
                std::fs::write(&path, want).expect("write a schema");
            } else {
                stale.push(name.to_string());
            }
        }
    }
    // Files nobody generates any more are stale too.
    let known: Vec<&str> = generated.iter().map(|(n, _)| *n).collect();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if name.ends_with(".json") && !known.contains(&name.as_str()) {
                if bless {
                    std::fs::remove_file(entry.path()).expect("remove a stale schema");
                } else {
                    stale.push(name);
                }
            }
        }
    }
    assert!(
        stale.is_empty(),
        "schemas/ is out of date ({stale:?}); regenerate with \
         `SPINDLE_BLESS=1 cargo test -p spindle --test schemas`"
    );
}

#[test]
fn schemas_describe_real_messages() {
    // A spot check that the generated schemas accept what the types serialise: every request
    // type appears in the request schema's tags.
    let request = spindle_protocol::native::schemas()
        .into_iter()
        .find(|(n, _)| *n == "request.json")
        .map(|(_, s)| s)
        .expect("request schema");
    let text = request.to_string();
    for tag in [
        "create_session",
        "list_sessions",
        "session_info",
        "execute",
        "interrupt",
        "restart",
        "close",
        "input_reply",
        "stdin",
        "complete",
        "inspect",
        "is_complete",
        "watch",
        "attach",
        "shutdown",
        "chat",
        "chat_reply",
        "chat_cancel",
    ] {
        assert!(text.contains(&format!("\"{tag}\"")), "{tag} missing");
    }
}
