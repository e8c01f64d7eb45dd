//! Black-box tests of the LLM loop: the real [`Agent`] against the real mock server process
//! (`tests/llm/mock_llm.py`) and real language sessions (a [`Kernel`] with Python and bash).
//! Each test starts its own mock, posts its script, and checks both the items the loop
//! produced and the requests the mock received.

mod common;

use std::time::{Duration, Instant};

use base64::Engine as _;
use common::*;
use serde_json::{json, Value};
use spindle_llm::agent::NoOperator;
use spindle_llm::policy::marker;
use spindle_llm::{Agent, Decision, LoopSettings, ProviderSettings};
use spindle_protocol::conversation::{DoneReason, Item, ItemBody, NoticeFormat, Role};
use spindle_protocol::{Body, StatusFormat};

// --- plain answers -----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn plain_answer_streams_and_counts_usage() {
    let mut c = Chat::new(auto()).await;
    let text = "Hello there, world! How are you?";
    c.mock
        .script(json!([{"text": text, "chunk_size": 4}]))
        .await;
    let s = c.send("hi", &NoOperator).await;
    assert_eq!(s.reason, DoneReason::Stop);
    assert_eq!(
        s.kinds(),
        [
            vec!["message", "message"],
            vec!["message"; 8],
            vec!["message", "done"]
        ]
        .concat()
    );
    assert_eq!(s.items[0].role, Role::User);
    assert_eq!(
        s.items[0].body,
        ItemBody::Message {
            content: Some("hi".into())
        }
    );
    assert!(s.items[1].start && s.items[1].role == Role::Assistant);
    assert!(s.items[10].end);
    assert_eq!(s.message_pieces().len(), 8);
    assert_eq!(s.text(), text);

    let reqs = c.mock.chats().await;
    assert_eq!(reqs.len(), 1);
    let body = &reqs[0]["body"];
    assert_eq!(body["model"], MODEL);
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"], json!({"include_usage": true}));
    let msgs = messages(&reqs[0]);
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[0]["role"], "system");
    assert_eq!(msgs[1], json!({"role": "user", "content": "hi"}));
    let tool = &body["tools"][0];
    assert_eq!(tool["function"]["name"], "execute");
    assert_eq!(
        tool["function"]["parameters"]["properties"]["language"]["enum"],
        json!(["python", "bash"])
    );
    // The usage chunk's numbers, as the mock computes them.
    let (rounds, usage) = s.done();
    assert_eq!(rounds, 1);
    assert_eq!(usage.prompt_tokens, (prompt_chars(body) / 4).max(1) as u64);
    assert_eq!(usage.completion_tokens, (text.chars().count() / 4) as u64);
    assert_eq!(usage.reported, 1);
    assert_eq!(c.agent.usage(), usage);
    c.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn non_streaming_answer_and_tool_call() {
    let settings = ProviderSettings {
        stream: false,
        ..fast()
    };
    let mut c = Chat::with(settings, auto()).await;
    c.mock
        .script(json!([
            {"text": "plain answer"},
            {"tool_calls": [exec("python", "print(6*7)")]},
            {"text": "it is 42"},
        ]))
        .await;
    let s = c.send("hi", &NoOperator).await;
    assert_eq!(s.reason, DoneReason::Stop);
    assert_eq!(s.text(), "plain answer");
    assert_eq!(
        s.kinds(),
        ["message", "message", "message", "message", "done"]
    );
    let (_, usage) = s.done();
    assert_eq!(usage.reported, 1);
    assert_eq!(usage.completion_tokens, ("plain answer".len() / 4) as u64);

    let s = c.send("compute", &NoOperator).await;
    assert_eq!(s.reason, DoneReason::Stop);
    let r = s.results();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].0, "call_1_0");
    assert!(r[0].1.contains("42"), "{r:?}");
    assert_eq!(s.code_pieces("call_1_0").concat(), "print(6*7)");
    assert_eq!(s.text(), "it is 42");
    assert_eq!(s.done().0, 2);

    let reqs = c.mock.chats().await;
    assert_eq!(reqs.len(), 3);
    for r in &reqs {
        assert_eq!(r["body"]["stream"], false);
        assert!(r["body"].get("stream_options").is_none(), "{r}");
    }
    let msgs = messages(&reqs[2]);
    let n = msgs.len();
    assert_eq!(msgs[n - 2]["tool_calls"][0]["id"], "call_1_0");
    assert_eq!(msgs[n - 1]["role"], "tool");
    assert_eq!(msgs[n - 1]["tool_call_id"], "call_1_0");
    assert!(msgs[n - 1]["content"].as_str().unwrap().contains("42"));
    c.finish().await;
}

// --- tool calls --------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn one_tool_call_runs_and_reports_back() {
    let mut c = Chat::new(auto()).await;
    c.mock
        .script(json!([
            {"tool_calls": [exec("python", "print(6*7)")]},
            {"text": "The answer is 42."},
        ]))
        .await;
    let s = c.send("what is 6*7?", &NoOperator).await;
    assert_eq!(s.reason, DoneReason::Stop);
    let call = "call_0_0";
    assert_eq!(s.code_pieces(call).concat(), "print(6*7)");
    // The output items carry the run's chunks, from `started` to `finished`.
    let outs = s.outputs(call);
    assert!(
        matches!(
            outs.first(),
            Some(Body::Status {
                format: StatusFormat::Started,
                ..
            })
        ),
        "{outs:#?}"
    );
    assert!(
        matches!(
            outs.last(),
            Some(Body::Status {
                format: StatusFormat::Finished,
                ..
            })
        ),
        "{outs:#?}"
    );
    assert_eq!(s.stdout(call).trim_end(), "42");
    let r = s.results();
    assert_eq!(r, vec![(call.to_string(), "42".to_string(), 0)]);
    assert_eq!(s.text(), "The answer is 42.");
    // code, then outputs, then the tool result, then the next answer.
    let k = s.kinds();
    let code_end = k.iter().rposition(|t| *t == "code").unwrap();
    let first_out = k.iter().position(|t| *t == "output").unwrap();
    let result = k.iter().position(|t| *t == "tool_result").unwrap();
    let last_out = k.iter().rposition(|t| *t == "output").unwrap();
    assert!(code_end < first_out && last_out < result, "{k:?}");
    assert_eq!(s.done().0, 2);

    let reqs = c.mock.chats().await;
    assert_eq!(reqs.len(), 2);
    let msgs = messages(&reqs[1]);
    assert_eq!(msgs.len(), 4, "{msgs:#?}");
    let a = &msgs[2];
    assert_eq!(a["role"], "assistant");
    assert_eq!(a["content"], Value::Null);
    assert_eq!(a["tool_calls"][0]["id"], call);
    assert_eq!(a["tool_calls"][0]["type"], "function");
    assert_eq!(a["tool_calls"][0]["function"]["name"], "execute");
    let args: Value = serde_json::from_str(
        a["tool_calls"][0]["function"]["arguments"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(args, json!({"language": "python", "code": "print(6*7)"}));
    assert_eq!(
        msgs[3],
        json!({"role": "tool", "tool_call_id": call, "content": "42"})
    );
    c.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_calls_in_one_turn_run_in_order_and_state_persists() {
    let mut c = Chat::new(auto()).await;
    c.mock
        .script(json!([
            {"tool_calls": [exec("python", "x = 5\nprint('py', x)"), exec("bash", "echo from-bash")]},
            {"text": "set"},
            {"tool_calls": [exec("python", "print(x)")]},
            {"text": "it was 5"},
        ]))
        .await;
    let s = c.send("set x", &NoOperator).await;
    assert_eq!(s.reason, DoneReason::Stop);
    let r = s.results();
    assert_eq!(r.len(), 2, "{r:?}");
    assert_eq!(r[0].0, "call_0_0");
    assert_eq!(r[0].1, "py 5");
    assert_eq!(r[1].0, "call_0_1");
    assert_eq!(r[1].1, "from-bash");
    // All of the first call's output comes before any of the second's.
    let calls: Vec<&str> = s
        .items
        .iter()
        .filter_map(|i| match &i.body {
            ItemBody::Output { call, .. } => Some(call.as_str()),
            _ => None,
        })
        .collect();
    let first_b = calls.iter().position(|c| *c == "call_0_1").unwrap();
    assert!(calls[..first_b].iter().all(|c| *c == "call_0_0"));
    assert!(calls[first_b..].iter().all(|c| *c == "call_0_1"));
    assert_eq!(
        c.runner.ran(),
        vec![
            ("python".to_string(), "x = 5\nprint('py', x)".to_string()),
            ("bash".to_string(), "echo from-bash".to_string())
        ]
    );

    let s = c.send("what is x?", &NoOperator).await;
    assert_eq!(s.reason, DoneReason::Stop);
    assert_eq!(s.result(), "5");

    let reqs = c.mock.chats().await;
    assert_eq!(reqs.len(), 4);
    let msgs = messages(&reqs[1]);
    let ids: Vec<&Value> = msgs[2]["tool_calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| &t["id"])
        .collect();
    assert_eq!(ids, [&json!("call_0_0"), &json!("call_0_1")]);
    assert_eq!(msgs[3]["role"], "tool");
    assert_eq!(msgs[3]["tool_call_id"], "call_0_0");
    assert_eq!(msgs[3]["content"], "py 5");
    assert_eq!(msgs[4]["role"], "tool");
    assert_eq!(msgs[4]["tool_call_id"], "call_0_1");
    assert_eq!(msgs[4]["content"], "from-bash");
    // The last request has the whole conversation.
    let msgs = messages(&reqs[3]);
    let roles: Vec<&str> = msgs.iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(
        roles,
        [
            "system",
            "user",
            "assistant",
            "tool",
            "tool",
            "assistant",
            "user",
            "assistant",
            "tool"
        ]
    );
    assert_eq!(msgs[8]["tool_call_id"], "call_2_0");
    c.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn arguments_split_across_deltas_stream_the_code() {
    let mut c = Chat::new(auto()).await;
    let code = "s = \"a\\tb\"\nprint(len(s), 'é', 6*7)";
    c.mock
        .script(json!([
            {"tool_calls": [exec("python", code)], "split": 1},
            {"text": "ok"},
        ]))
        .await;
    let s = c.send("go", &NoOperator).await;
    assert_eq!(s.reason, DoneReason::Stop);
    let pieces = s.code_pieces("call_0_0");
    assert!(pieces.len() > 5, "{pieces:?}");
    assert_eq!(pieces.concat(), code);
    assert_eq!(s.result(), "3 é 42");
    // The code item says its language.
    let fmt = s.items.iter().find_map(|i| match &i.body {
        ItemBody::Code { format, .. } => Some(format.clone()),
        _ => None,
    });
    assert_eq!(fmt.as_deref(), Some("python"));
    let reqs = c.mock.chats().await;
    let msgs = messages(&reqs[1]);
    let args: Value = serde_json::from_str(
        msgs[2]["tool_calls"][0]["function"]["arguments"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(args["code"], code);

    // `code` before `language`: the code is held back until the language is known, then shown
    // and run all the same.
    c.mock
        .script(json!([
            {"tool_calls": [{"name": "execute", "arguments": {"code": "print(7*6)", "language": "python"}}], "split": 1},
            {"text": "ok"},
        ]))
        .await;
    let s = c.send("again", &NoOperator).await;
    assert_eq!(s.code_pieces("call_0_0").concat(), "print(7*6)");
    assert_eq!(s.result(), "42");
    c.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ollama_whole_call_with_finish_stop_runs() {
    let mut c = Chat::new(auto()).await;
    c.mock
        .script(json!([
            {"ollama": true, "tool_calls": [exec("python", "print(6*7)")]},
            {"ollama": true, "text": "42 it is"},
            {"ollama": true, "no_index": true, "tool_calls": [exec("python", "print(7*8)"), exec("bash", "echo two")]},
            {"ollama": true, "text": "done"},
        ]))
        .await;
    let s = c.send("go", &NoOperator).await;
    assert_eq!(s.reason, DoneReason::Stop);
    assert_eq!(s.result(), "42");
    assert_eq!(s.text(), "42 it is");
    // No usage chunk in Ollama's shape.
    assert_eq!(s.done().1.reported, 0);
    let s = c.send("again", &NoOperator).await;
    let r = s.results();
    assert_eq!(r.len(), 2, "{r:?}");
    assert_eq!((r[0].0.as_str(), r[0].1.as_str()), ("call_2_0", "56"));
    assert_eq!((r[1].0.as_str(), r[1].1.as_str()), ("call_2_1", "two"));
    let reqs = c.mock.chats().await;
    assert_eq!(reqs.len(), 4);
    let msgs = messages(&reqs[1]);
    assert_eq!(msgs[3]["tool_call_id"], "call_0_0");
    c.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn finish_reason_stop_with_tool_calls_runs() {
    let mut c = Chat::new(auto()).await;
    c.mock
        .script(json!([
            {"tool_calls": [exec("python", "print(6*7)")], "finish_reason": "stop"},
            {"text": "ok"},
        ]))
        .await;
    let s = c.send("go", &NoOperator).await;
    assert_eq!(s.reason, DoneReason::Stop);
    assert_eq!(s.result(), "42");
    assert_eq!(c.mock.chats().await.len(), 2);
    c.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn empty_and_unknown_finish_reasons_and_empty_usage() {
    let mut c = Chat::new(auto()).await;
    c.mock
        .script(json!([
            {"tool_calls": [exec("python", "print(6*7)")], "finish_reason": "", "usage": {}},
            {"text": "odd ending", "finish_reason": "end_turn_or_whatever", "usage": {}},
            {"text": "no reason", "finish_reason": ""},
        ]))
        .await;
    let s = c.send("go", &NoOperator).await;
    assert_eq!(s.reason, DoneReason::Stop);
    assert_eq!(s.result(), "42");
    assert_eq!(s.text(), "odd ending");
    // `usage: {}` counts nothing.
    assert_eq!(s.done().1, Default::default());
    let s = c.send("more", &NoOperator).await;
    assert_eq!(s.reason, DoneReason::Stop);
    assert_eq!(s.text(), "no reason");
    assert_eq!(s.done().1.reported, 1);
    c.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sse_comments_and_keepalive_lines_are_ignored() {
    for stream in [true, false] {
        let settings = ProviderSettings { stream, ..fast() };
        let mut c = Chat::with(settings, auto()).await;
        c.mock
            .script(json!([
                {"comments": true, "tool_calls": [exec("python", "print(6*7)")]},
                {"comments": true, "text": "all fine here"},
            ]))
            .await;
        let s = c.send("go", &NoOperator).await;
        assert_eq!(
            s.reason,
            DoneReason::Stop,
            "stream={stream}: {:#?}",
            s.items
        );
        assert_eq!(s.result(), "42");
        assert_eq!(s.text(), "all fine here");
        c.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn reasoning_streams_as_reasoning_items() {
    let mut c = Chat::new(auto()).await;
    c.mock
        .script(json!([
            {"reasoning": "Let me think about this.", "text": "Answer."},
            {"reasoning": "Other key.", "reasoning_key": "reasoning", "text": "Two."},
        ]))
        .await;
    let s = c.send("q", &NoOperator).await;
    assert_eq!(s.reason, DoneReason::Stop);
    assert_eq!(s.reasoning(), "Let me think about this.");
    assert_eq!(s.text(), "Answer.");
    let k = s.kinds();
    let r = k.iter().rposition(|t| *t == "reasoning").unwrap();
    let m = k.iter().skip(1).position(|t| *t == "message").unwrap() + 1;
    assert!(r < m, "reasoning comes first: {k:?}");
    let starts = s
        .items
        .iter()
        .filter(|i| i.start && matches!(i.body, ItemBody::Reasoning { .. }))
        .count();
    assert_eq!(starts, 1);
    let s = c.send("q2", &NoOperator).await;
    assert_eq!(s.reasoning(), "Other key.");
    assert_eq!(s.text(), "Two.");
    // Reasoning is not sent back as the answer.
    let reqs = c.mock.chats().await;
    let msgs = messages(&reqs[1]);
    assert_eq!(msgs[2], json!({"role": "assistant", "content": "Answer."}));
    c.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tool_calls_without_index_are_told_apart_by_id() {
    let mut c = Chat::new(auto()).await;
    c.mock
        .script(json!([
            {"no_index": true, "split": 3, "tool_calls": [exec("python", "print(6*7)"), exec("bash", "echo two")]},
            {"text": "ok"},
        ]))
        .await;
    let s = c.send("go", &NoOperator).await;
    assert_eq!(s.reason, DoneReason::Stop);
    let r = s.results();
    assert_eq!(r.len(), 2, "{r:?}");
    assert_eq!((r[0].0.as_str(), r[0].1.as_str()), ("call_0_0", "42"));
    assert_eq!((r[1].0.as_str(), r[1].1.as_str()), ("call_0_1", "two"));
    c.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn events_split_across_http_chunks_and_utf8_sequences() {
    let mut c = Chat::new(auto()).await;
    let text = "héllo wörld ✓ — ünïcode 🎉 done";
    c.mock
        .script(json!([
            {"rechunk": 7, "tool_calls": [exec("python", "print('é', 6*7)")]},
            {"rechunk": 5, "text": text},
        ]))
        .await;
    let s = c.send("go", &NoOperator).await;
    assert_eq!(s.reason, DoneReason::Stop, "{:#?}", s.items);
    assert_eq!(s.result(), "é 42");
    assert_eq!(s.text(), text);
    c.finish().await;
}

/// Regression: an answer that ended with `[DONE]` but never said a `finish_reason` (the
/// field null or left out, as some servers do) was taken for a cut stream and lost.
#[tokio::test(flavor = "multi_thread")]
async fn an_answer_without_any_finish_reason_is_not_a_cut() {
    let mut c = Chat::new(auto()).await;
    c.mock
        .script(json!([
            {"tool_calls": [exec("python", "print(6*7)")], "finish_reason": null},
            {"text": "no reason given", "finish_reason": "__omit__"},
        ]))
        .await;
    let s = c.send("go", &NoOperator).await;
    assert_eq!(s.reason, DoneReason::Stop, "{:#?}", s.items);
    assert_eq!(s.result(), "42");
    assert_eq!(s.text(), "no reason given");
    c.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_model_without_tools_falls_back_to_fenced_code() {
    let mut c = Chat::new(auto()).await;
    c.mock
        .script(json!([
            {"status": 400, "body": {"error": {"message": "registry.ollama.ai/library/gemma:2b does not support tools", "type": "api_error"}}},
            {"text": "```python\nprint(6*7)\n```"},
            {"text": "42"},
        ]))
        .await;
    let s = c.send("go", &NoOperator).await;
    assert_eq!(s.reason, DoneReason::Stop, "{:#?}", s.items);
    let info = s.notices(NoticeFormat::Info);
    assert!(
        info.iter().any(|n| n.contains("does not support tools")),
        "{info:?}"
    );
    assert_eq!(s.results(), vec![("fence-1-1".into(), "42".into(), 0)]);
    let reqs = c.mock.chats().await;
    assert_eq!(reqs.len(), 3);
    assert!(reqs[0]["body"].get("tools").is_some());
    assert!(reqs[1]["body"].get("tools").is_none());
    assert!(reqs[2]["body"].get("tools").is_none());
    c.finish().await;
}

// --- fenced code blocks ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn fenced_code_runs_when_tools_are_off() {
    let settings = LoopSettings {
        tools: false,
        ..auto()
    };
    let mut c = Chat::new(settings).await;
    let answer = "Let me compute.\n```python\nprint(6*7)\n```\nThat should do.";
    c.mock
        .script(json!([{"text": answer}, {"text": "It is 42."}]))
        .await;
    let s = c.send("6*7?", &NoOperator).await;
    assert_eq!(s.reason, DoneReason::Stop);
    assert_eq!(s.text(), format!("{answer}It is 42."));
    assert_eq!(s.code_pieces("fence-1-1").concat(), "print(6*7)");
    assert_eq!(s.results(), vec![("fence-1-1".into(), "42".into(), 0)]);
    assert_eq!(s.stdout("fence-1-1").trim_end(), "42");

    let reqs = c.mock.chats().await;
    assert_eq!(reqs.len(), 2);
    for r in &reqs {
        assert!(r["body"].get("tools").is_none(), "tools sent: {r}");
    }
    let sys = messages(&reqs[0])[0]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(sys.contains("```python"), "{sys}");
    let msgs = messages(&reqs[1]);
    assert_eq!(msgs.len(), 4);
    assert_eq!(msgs[2], json!({"role": "assistant", "content": answer}));
    assert_eq!(msgs[3]["role"], "user");
    assert_eq!(
        msgs[3]["content"],
        "Output of code block 1:\n```\n42\n```\n"
    );
    c.finish().await;
}

// --- images ------------------------------------------------------------------------------------

/// A plot shown the way the Python bootstrap captures it: its own inline backend turns
/// `plt.show()` into an image chunk. (`matplotlib.use('Agg')` first would switch that backend
/// off, as it does under Jupyter's inline backend, and nothing would be shown.)
const PLOT: &str = "import matplotlib.pyplot as plt\nplt.plot([1,2,3]); plt.show()";

#[tokio::test(flavor = "multi_thread")]
async fn vision_attaches_the_plot_as_a_png_data_url() {
    let settings = LoopSettings {
        vision: true,
        ..auto()
    };
    let mut c = Chat::new(settings).await;
    c.mock
        .script(json!([
            {"tool_calls": [exec("python", PLOT)]},
            {"text": "a line"},
        ]))
        .await;
    let s = c.send("plot", &NoOperator).await;
    assert_eq!(s.reason, DoneReason::Stop);
    let r = s.results();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].2, 1, "one image attached: {r:?}");
    assert!(r[0].1.contains("attached"), "{r:?}");
    assert!(
        s.outputs("call_0_0").iter().any(|b| matches!(
            b,
            Body::Image {
                content: Some(_),
                ..
            }
        )),
        "the run shows an image"
    );
    let reqs = c.mock.chats().await;
    let msgs = messages(&reqs[1]);
    assert_eq!(msgs[3]["role"], "tool");
    let user = &msgs[4];
    assert_eq!(user["role"], "user");
    let parts = user["content"].as_array().expect("content parts");
    assert_eq!(parts[0]["type"], "text");
    let url = parts
        .iter()
        .find(|p| p["type"] == "image_url")
        .and_then(|p| p["image_url"]["url"].as_str())
        .expect("an image_url part");
    let b64 = url
        .strip_prefix("data:image/png;base64,")
        .unwrap_or_else(|| panic!("not a PNG data URL: {}", &url[..40.min(url.len())]));
    let png = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("base64");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    c.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_vision_the_plot_is_described_not_attached() {
    let mut c = Chat::new(auto()).await;
    c.mock
        .script(json!([
            {"tool_calls": [exec("python", PLOT)]},
            {"text": "a line"},
        ]))
        .await;
    let s = c.send("plot", &NoOperator).await;
    let r = s.results();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].2, 0);
    assert!(r[0].1.contains("not attached"), "{r:?}");
    let reqs = c.mock.chats().await;
    assert!(!reqs[1]["raw"].as_str().unwrap().contains("image_url"));
    assert_eq!(messages(&reqs[1]).len(), 4);
    c.finish().await;
}

// --- the output budget -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn long_output_is_cut_with_the_exact_dropped_count() {
    let mut settings = auto();
    settings.policy.budget = 1000;
    let mut c = Chat::new(settings).await;
    let lines = 14_285;
    let code = format!(
        "import sys\n_ = sys.stdout.write(''.join('%06d\\n' % i for i in range({lines})) + 'END')"
    );
    let known: String = (0..lines).map(|i| format!("{i:06}\n")).collect::<String>() + "END";
    c.mock
        .script(json!([{"tool_calls": [exec("python", &code)]}, {"text": "long"}]))
        .await;
    let s = c.send("print a lot", &NoOperator).await;
    assert_eq!(s.reason, DoneReason::Stop);
    assert_eq!(
        s.stdout("call_0_0"),
        known,
        "the output items carry everything"
    );
    let total = known.len();
    let kept = 1000;
    let dropped = total - kept;
    let want = format!(
        "{}{}{}",
        &known[..kept / 2],
        marker(dropped as u64),
        &known[total - kept / 2..]
    );
    let content = s.result();
    assert!(
        content.contains(&format!("[… {dropped} bytes dropped …]")),
        "{content}"
    );
    assert_eq!(content, want);
    let reqs = c.mock.chats().await;
    let msgs = messages(&reqs[1]);
    assert_eq!(msgs[3]["content"], want);
    c.finish().await;
}

// --- failures of the endpoint ------------------------------------------------------------------

/// A conversation is still usable: one more message gets a normal answer.
async fn still_usable(c: &mut Chat, turn: usize) {
    let s = c.send("still there?", &NoOperator).await;
    assert_eq!(s.reason, DoneReason::Stop, "{:#?}", s.items);
    assert_eq!(s.text(), "yes");
    let reqs = c.mock.chats().await;
    let last = messages(reqs.last().unwrap());
    assert_eq!(
        last.last().unwrap(),
        &json!({"role": "user", "content": "still there?"})
    );
    assert_eq!(reqs.last().unwrap()["turn"], turn);
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_connection_is_a_clear_error() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}/v1");
    let runner = std::sync::Arc::new(KernelRunner::new(&["python", "bash"]));
    let settings = ProviderSettings {
        max_retries: 1,
        ..fast()
    };
    let mut agent = Agent::new(provider_at(&url, settings), runner.clone(), auto());
    let s = send(&mut agent, "hi", &NoOperator).await;
    assert_eq!(s.reason, DoneReason::Error);
    let e = s.error();
    assert!(e.contains("cannot reach"), "{e}");
    assert!(e.contains(&format!("127.0.0.1:{port}")), "{e}");
    assert_eq!(s.notices(NoticeFormat::Retry).len(), 1, "{:#?}", s.items);
    assert!(s.elapsed < Duration::from_secs(5));
    // Sending again fails the same way, cleanly.
    let s = send(&mut agent, "hi again", &NoOperator).await;
    assert_eq!(s.reason, DoneReason::Error);
    // The conversation moves to a working endpoint and goes on.
    let mock = Mock::start().await;
    mock.script(json!([{"text": "yes"}])).await;
    let mut moved = Agent::new(provider_at(&mock.url(), fast()), runner.clone(), auto());
    moved.load(agent.save()).unwrap();
    let s = send(&mut moved, "still there?", &NoOperator).await;
    assert_eq!(s.reason, DoneReason::Stop);
    assert_eq!(s.text(), "yes");
    let msgs = messages(&mock.chats().await[0]);
    let users: Vec<&str> = msgs
        .iter()
        .filter(|m| m["role"] == "user")
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(users, ["hi", "hi again", "still there?"]);
    runner.kernel.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unauthorized_names_the_api_key_but_not_its_value() {
    let mut c = Chat::new(auto()).await;
    c.mock
        .script(json!([{"status": 401}, {"text": "yes"}]))
        .await;
    let s = c.send("hi", &NoOperator).await;
    assert_eq!(s.reason, DoneReason::Error);
    let e = s.error();
    assert!(e.contains("rejected the API key"), "{e}");
    assert!(e.contains("401"), "{e}");
    assert!(e.contains("SPINDLE_LLM_API_KEY"), "{e}");
    assert!(!e.contains(KEY), "the key leaked: {e}");
    assert!(!s.json().contains(KEY));
    assert_eq!(c.mock.attempts().await, 1, "401 is not retried");
    assert!(s.notices(NoticeFormat::Retry).is_empty());
    still_usable(&mut c, 1).await;
    c.finish().await;
}

/// Regression: a server that echoes the key back in its error message (some do, in full) had
/// the key shown in the error notice, and so in the saved conversation.
#[tokio::test(flavor = "multi_thread")]
async fn an_api_key_echoed_in_an_error_is_not_shown() {
    let mut c = Chat::new(auto()).await;
    let echo = |status: u16| {
        json!({"status": status, "body": {"error": {
            "message": format!("Incorrect API key provided: {KEY}."),
            "type": "invalid_request_error"}}})
    };
    c.mock
        .script(json!([
            echo(401),
            echo(400),
            {"text": "partial", "error_mid_stream": {"message": format!("key {KEY} is out of quota")}},
            {"text": "yes"},
        ]))
        .await;
    for _ in 0..3 {
        let s = c.send("hi", &NoOperator).await;
        assert_eq!(s.reason, DoneReason::Error);
        let e = s.error();
        assert!(!e.contains(KEY), "the key leaked: {e}");
        assert!(e.contains("***"), "{e}");
    }
    let saved = serde_json::to_string(&c.agent.save()).unwrap();
    assert!(!saved.contains(KEY));
    still_usable(&mut c, 3).await;
    c.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn model_not_found_names_the_model() {
    let mut c = Chat::new(auto()).await;
    c.mock
        .script(json!([{"status": 404}, {"text": "yes"}]))
        .await;
    let s = c.send("hi", &NoOperator).await;
    assert_eq!(s.reason, DoneReason::Error);
    let e = s.error();
    assert!(e.contains("\"mock-model\" not found"), "{e}");
    assert!(e.contains("404"), "{e}");
    assert!(e.contains("--model"), "{e}");
    assert_eq!(c.mock.attempts().await, 1);
    still_usable(&mut c, 1).await;
    c.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limit_with_retry_after_waits_and_succeeds() {
    let mut c = Chat::new(auto()).await;
    c.mock
        .script(json!([{"status": 429, "retry_after": "1"}, {"text": "yes"}]))
        .await;
    let s = c.send("still there?", &NoOperator).await;
    assert_eq!(s.reason, DoneReason::Stop, "{:#?}", s.items);
    assert_eq!(s.text(), "yes");
    let retries = s.notices(NoticeFormat::Retry);
    assert_eq!(retries.len(), 1);
    assert!(retries[0].contains("429"), "{retries:?}");
    assert!(retries[0].contains("1.0 s"), "{retries:?}");
    assert!(s.elapsed >= Duration::from_millis(950), "{:?}", s.elapsed);
    assert_eq!(c.mock.attempts().await, 2);
    let reqs = c.mock.chats().await;
    assert_eq!(reqs[0]["body"], reqs[1]["body"], "the same request again");
    // The retry notice comes before the answer.
    let k = s.kinds();
    assert_eq!(k[1], "notice");
    c.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limit_without_retry_after_backs_off() {
    let mut c = Chat::new(auto()).await;
    c.mock
        .script(json!([{"status": 429}, {"status": 429}, {"text": "yes"}]))
        .await;
    let s = c.send("still there?", &NoOperator).await;
    assert_eq!(s.reason, DoneReason::Stop, "{:#?}", s.items);
    assert_eq!(s.notices(NoticeFormat::Retry).len(), 2);
    assert_eq!(c.mock.attempts().await, 3);
    assert!(s.elapsed < Duration::from_secs(2), "{:?}", s.elapsed);
    c.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn server_error_with_a_text_body_is_retried() {
    let mut c = Chat::new(auto()).await;
    c.mock
        .script(json!([{"status": 500, "body": "upstream exploded"}, {"text": "yes"}]))
        .await;
    let s = c.send("still there?", &NoOperator).await;
    assert_eq!(s.reason, DoneReason::Stop);
    assert_eq!(s.text(), "yes");
    let r = s.notices(NoticeFormat::Retry);
    assert_eq!(r.len(), 1);
    assert!(r[0].contains("500"), "{r:?}");
    assert_eq!(c.mock.attempts().await, 2);
    c.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn server_errors_beyond_max_retries_give_up() {
    let mut c = Chat::new(auto()).await;
    c.mock
        .script(json!([
            {"status": 500, "body": "upstream exploded"},
            {"status": 500, "body": "upstream exploded"},
            {"status": 503, "body": "upstream exploded"},
            {"text": "yes"},
        ]))
        .await;
    let s = c.send("hi", &NoOperator).await;
    assert_eq!(s.reason, DoneReason::Error);
    assert_eq!(s.notices(NoticeFormat::Retry).len(), 2);
    let e = s.error();
    assert!(e.contains("503"), "{e}");
    assert!(e.contains("upstream exploded"), "{e}");
    assert_eq!(c.mock.attempts().await, 3, "1 attempt + max_retries 2");
    still_usable(&mut c, 3).await;
    c.finish().await;
}

/// One failing turn, then the conversation goes on.
async fn stream_failure(turn: Value, stream: bool) -> String {
    let settings = ProviderSettings { stream, ..fast() };
    let mut c = Chat::with(settings, auto()).await;
    c.mock.script(json!([turn, {"text": "yes"}])).await;
    let s = c.send("hi", &NoOperator).await;
    assert_eq!(s.reason, DoneReason::Error, "{turn}: {:#?}", s.items);
    assert!(
        s.elapsed < Duration::from_secs(4),
        "{turn}: {:?}",
        s.elapsed
    );
    let e = s.error();
    assert_eq!(c.mock.attempts().await, 1, "{turn}: {e}");
    still_usable(&mut c, 1).await;
    c.finish().await;
    e
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_json_in_the_stream() {
    let e = stream_failure(json!({"text": "some words here", "malformed": true}), true).await;
    assert!(e.contains("cannot read"), "{e}");
    assert!(e.contains("not json"), "{e}");
    let e = stream_failure(json!({"text": "some words here", "malformed": true}), false).await;
    assert!(e.contains("cannot read"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn error_in_the_middle_of_the_stream() {
    let err = json!({"message": "the model is overloaded", "type": "server_error"});
    for stream in [true, false] {
        let e = stream_failure(
            json!({"text": "some words here", "error_mid_stream": err}),
            stream,
        )
        .await;
        assert!(e.contains("the model is overloaded"), "{e}");
        assert!(e.contains("reported an error"), "{e}");
    }
}

/// Regression: a stream (or a non-streamed body) that broke off after the server had answered
/// was reported as "cannot reach …: the stream broke", as if the server were down.
#[tokio::test(flavor = "multi_thread")]
async fn a_cut_answer_is_reported_as_cut_not_as_unreachable() {
    for (turn, stream) in [
        (
            json!({"text": "some words here and more", "cut": true}),
            true,
        ),
        (
            json!({"text": "some words here and more", "cut": "reset"}),
            true,
        ),
        (
            json!({"text": "some words here and more", "cut_clean": true}),
            true,
        ),
        (
            json!({"tool_calls": [exec("python", "print(1)")], "cut_clean": true}),
            true,
        ),
        (
            json!({"text": "some words here and more", "cut": true}),
            false,
        ),
        (
            json!({"text": "some words here and more", "cut": "reset"}),
            false,
        ),
    ] {
        let e = stream_failure(turn.clone(), stream).await;
        assert!(
            e.contains("ended its stream before finishing the answer"),
            "{turn} stream={stream}: {e}"
        );
        assert!(!e.contains("cannot reach"), "{turn} stream={stream}: {e}");
    }
    // Half a JSON body that says it is complete cannot be read.
    let e = stream_failure(
        json!({"text": "some words here and more", "cut_clean": true}),
        false,
    )
    .await;
    assert!(e.contains("cannot read"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stall_past_the_idle_timeout_is_an_error() {
    let e = stream_failure(json!({"text": "some words here", "stall": 30}), true).await;
    assert!(e.contains("idle timeout"), "{e}");
    assert!(e.contains("sent nothing for 2 s"), "{e}");
}

/// Regression: the body of a non-streamed answer was read without any timeout, so a server
/// that stalled after the headers hung the loop (here for 30 s; forever in the worst case).
#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_non_streamed_body_hits_the_idle_timeout() {
    let e = stream_failure(json!({"text": "some words here", "stall": 30}), false).await;
    assert!(e.contains("idle timeout"), "{e}");
    assert!(e.contains("sent nothing for 2 s"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_response_headers_within_the_idle_timeout_is_retried_then_an_error() {
    let settings = ProviderSettings {
        idle_timeout: Duration::from_secs(1),
        max_retries: 1,
        ..fast()
    };
    let mut c = Chat::with(settings, auto()).await;
    c.mock
        .script(json!([{"text": "x", "delay": 30}, {"text": "x", "delay": 30}, {"text": "yes"}]))
        .await;
    let s = c.send("hi", &NoOperator).await;
    assert_eq!(s.reason, DoneReason::Error);
    assert!(s.elapsed < Duration::from_secs(4), "{:?}", s.elapsed);
    let e = s.error();
    assert!(e.contains("idle timeout"), "{e}");
    assert!(e.contains("1 s"), "{e}");
    let r = s.notices(NoticeFormat::Retry);
    assert_eq!(r.len(), 1);
    assert!(r[0].contains("no response within 1 s"), "{r:?}");
    assert_eq!(c.mock.attempts().await, 2);
    still_usable(&mut c, 2).await;
    c.finish().await;
}

// --- bad tool calls ----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn invalid_json_arguments_are_reported_and_corrected() {
    let mut c = Chat::new(auto()).await;
    c.mock
        .script(json!([
            {"tool_calls": [{"name": "execute", "arguments": "{\"language\": \"python\", \"code\": \"print(1)"}]},
            {"tool_calls": [exec("python", "print(6*7)")]},
            {"text": "fixed"},
        ]))
        .await;
    let s = c.send("go", &NoOperator).await;
    assert_eq!(s.reason, DoneReason::Stop);
    let r = s.results();
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].0, "call_0_0");
    assert!(r[0].1.contains("not valid JSON"), "{r:?}");
    assert_eq!(r[1].1, "42");
    assert_eq!(c.runner.ran().len(), 1, "the bad call did not run");
    let reqs = c.mock.chats().await;
    let msgs = messages(&reqs[1]);
    assert_eq!(msgs[3]["tool_call_id"], "call_0_0");
    assert!(msgs[3]["content"]
        .as_str()
        .unwrap()
        .contains("not valid JSON"));
    // The broken arguments go back as the model wrote them.
    assert_eq!(
        msgs[2]["tool_calls"][0]["function"]["arguments"],
        "{\"language\": \"python\", \"code\": \"print(1)"
    );
    c.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_language_lists_the_languages() {
    let mut c = Chat::new(auto()).await;
    c.mock
        .script(json!([
            {"tool_calls": [exec("cobol", "DISPLAY 'HI'.")]},
            {"text": "ok"},
        ]))
        .await;
    let s = c.send("go", &NoOperator).await;
    assert_eq!(s.reason, DoneReason::Stop);
    let r = s.result();
    assert!(r.contains("unknown language \"cobol\""), "{r}");
    assert!(r.contains("python, bash"), "{r}");
    assert!(c.runner.ran().is_empty());
    let msgs = messages(&c.mock.chats().await[1]);
    assert_eq!(msgs[3]["content"], r);
    c.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_tool_name_is_refused() {
    let mut c = Chat::new(auto()).await;
    c.mock
        .script(json!([
            {"tool_calls": [{"name": "browse", "arguments": {"url": "http://x"}}]},
            {"text": "ok"},
        ]))
        .await;
    let s = c.send("go", &NoOperator).await;
    assert_eq!(s.reason, DoneReason::Stop);
    let r = s.result();
    assert!(r.contains("no tool \"browse\""), "{r}");
    assert!(r.contains("execute"), "{r}");
    assert!(c.runner.ran().is_empty());
    let msgs = messages(&c.mock.chats().await[1]);
    assert_eq!(msgs[3]["tool_call_id"], "call_0_0");
    c.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_model_looping_on_a_failing_call_hits_the_round_limit() {
    let settings = LoopSettings {
        max_rounds: 3,
        ..auto()
    };
    let mut c = Chat::new(settings).await;
    let bad = json!({"tool_calls": [exec("python", "1/0")]});
    c.mock
        .script(json!([bad, bad, bad, bad, {"text": "yes"}]))
        .await;
    let s = c.send("divide", &NoOperator).await;
    assert_eq!(s.reason, DoneReason::Limit);
    assert_eq!(s.done().0, 3);
    let r = s.results();
    assert_eq!(r.len(), 3);
    assert!(r.iter().all(|r| r.1.contains("ZeroDivisionError")), "{r:?}");
    let limit = s.notices(NoticeFormat::Limit);
    assert_eq!(limit.len(), 1);
    assert!(limit[0].contains("3 tool rounds"), "{limit:?}");
    assert_eq!(c.mock.attempts().await, 3);
    // The next message gets its own rounds.
    let s = c.send("again", &NoOperator).await;
    assert_eq!(s.reason, DoneReason::Stop);
    assert_eq!(s.done().0, 2);
    c.finish().await;
}

// --- confirm mode ------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn confirm_skip_declines() {
    let mut c = Chat::new(confirm()).await;
    c.mock
        .script(json!([
            {"tool_calls": [exec("python", "print('should not run')")]},
            {"text": "ok, not running it"},
        ]))
        .await;
    let op = Scripted::new(vec![Decision::Skip], vec![]);
    let s = c.send("go", &op).await;
    assert_eq!(s.reason, DoneReason::Stop);
    assert_eq!(
        op.asked(),
        vec![Asked::Confirm {
            call: "call_0_0".into(),
            language: "python".into(),
            code: "print('should not run')".into()
        }]
    );
    let k = s.kinds();
    let confirm = k.iter().position(|t| *t == "confirm").unwrap();
    assert_eq!(
        &k[confirm..confirm + 3],
        ["confirm", "declined", "tool_result"]
    );
    assert!(!k.contains(&"output"));
    assert!(c.runner.ran().is_empty());
    assert!(s.result().contains("declined"));
    let msgs = messages(&c.mock.chats().await[1]);
    assert_eq!(msgs[3]["role"], "tool");
    assert!(msgs[3]["content"].as_str().unwrap().contains("declined"));
    c.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn confirm_edit_runs_the_new_code() {
    let mut c = Chat::new(confirm()).await;
    c.mock
        .script(json!([
            {"tool_calls": [exec("python", "print('original')")]},
            {"text": "ok"},
        ]))
        .await;
    let op = Scripted::new(vec![Decision::Edit("print('edited', 6*7)".into())], vec![]);
    let s = c.send("go", &op).await;
    assert_eq!(s.reason, DoneReason::Stop);
    // The model is told what really ran, since its own message still has the original.
    assert_eq!(
        s.result(),
        "[the user edited the code before running it; what ran was:\nprint('edited', 6*7)\n]\nedited 42"
    );
    assert_eq!(
        c.runner.ran(),
        vec![("python".to_string(), "print('edited', 6*7)".to_string())]
    );
    // The edited code is shown as code of the same call.
    let pieces = s.code_pieces("call_0_0");
    assert_eq!(pieces.last().unwrap(), "print('edited', 6*7)");
    c.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn confirm_mode_input_reaches_the_program() {
    let mut c = Chat::new(confirm()).await;
    let code = "name = input('name? ')\nprint('hi', name)";
    c.mock
        .script(json!([{"tool_calls": [exec("python", code)]}, {"text": "greeted"}]))
        .await;
    let op = Scripted::new(vec![Decision::Run], vec![Some("Ada".into())]);
    let s = c.send("greet", &op).await;
    assert_eq!(s.reason, DoneReason::Stop);
    assert_eq!(
        op.asked(),
        vec![
            Asked::Confirm {
                call: "call_0_0".into(),
                language: "python".into(),
                code: code.into()
            },
            Asked::Input {
                call: "call_0_0".into(),
                prompt: "name? ".into(),
                password: false
            }
        ]
    );
    assert!(s.items.iter().any(|i| matches!(&i.body,
        ItemBody::Input { prompt, .. } if prompt == "name? ")));
    assert!(s.result().contains("hi Ada"), "{}", s.result());
    assert!(!s.result().contains("waiting for input"), "{}", s.result());
    c.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn auto_run_input_is_reported_and_does_not_hang() {
    let mut c = Chat::new(auto()).await;
    let code = "name = input('name? ')\nprint('hi', name)";
    c.mock
        .script(json!([
            {"tool_calls": [exec("python", code)]},
            {"tool_calls": [exec("python", "print('next', 6*7)")]},
            {"text": "ok"},
        ]))
        .await;
    let op = Scripted::none();
    let s = c.send("greet", &op).await;
    assert_eq!(s.reason, DoneReason::Stop);
    assert!(op.asked().is_empty(), "{:?}", op.asked());
    assert!(s.elapsed < Duration::from_secs(10), "{:?}", s.elapsed);
    let r = s.results();
    assert_eq!(r.len(), 2);
    assert!(r[0].1.contains("waiting for input: name? "), "{r:?}");
    // The session still works after the interrupted input.
    assert_eq!(r[1].1, "next 42");
    c.finish().await;
}

// --- cancellation ------------------------------------------------------------------------------

fn is_text(i: &Item) -> bool {
    i.role == Role::Assistant && matches!(&i.body, ItemBody::Message { content: Some(_) })
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_while_the_stream_stalls() {
    let settings = ProviderSettings {
        idle_timeout: Duration::from_secs(30),
        ..fast()
    };
    let mut c = Chat::with(settings, auto()).await;
    c.mock
        .script(json!([{"text": "partial answer", "stall": 30}, {"text": "yes"}]))
        .await;
    let s = send_cancelling(&mut c.agent, "hi", &NoOperator, is_text).await;
    assert_eq!(s.reason, DoneReason::Cancelled);
    assert!(s.elapsed < Duration::from_secs(3), "{:?}", s.elapsed);
    assert_eq!(s.notices(NoticeFormat::Cancelled).len(), 1);
    assert_eq!(s.text(), "part");
    let t0 = Instant::now();
    still_usable(&mut c, 1).await;
    assert!(t0.elapsed() < Duration::from_secs(3));
    // What was said before the cancel stays in the conversation.
    let msgs = messages(&c.mock.chats().await[1]);
    assert_eq!(msgs[2], json!({"role": "assistant", "content": "part"}));
    c.finish().await;
}

/// Cancel a run when `when` sees an item; the run is interrupted, the message ends cancelled,
/// and the next message finds the session's state.
async fn cancel_a_run(when: fn(&Item) -> bool) {
    let mut c = Chat::new(auto()).await;
    c.mock
        .script(json!([
            // The state is set by an earlier message: a cancel that lands before the sleeping
            // run's first line (the regression below) must not lose it either.
            {"tool_calls": [exec("python", "x = 5")]},
            {"text": "set"},
            {"tool_calls": [exec("python", "print('sleeping', flush=True)\nimport time; time.sleep(30)")]},
            {"tool_calls": [exec("python", "print(x)")]},
            {"text": "x is 5"},
        ]))
        .await;
    let s = c.send("set x", &NoOperator).await;
    assert_eq!(s.reason, DoneReason::Stop);
    let s = send_cancelling(&mut c.agent, "sleep", &NoOperator, when).await;
    assert_eq!(s.reason, DoneReason::Cancelled);
    let r = s.result();
    assert!(s.elapsed < Duration::from_secs(5), "{:?} {r}", s.elapsed);
    assert!(r.contains("[the user interrupted the run]"), "{r}");
    let outs = s.outputs("call_2_0");
    assert!(
        matches!(outs.last(), Some(Body::Status { content: Some(st), .. })
            if st.outcome == Some(spindle_protocol::Outcome::Interrupted)),
        "{outs:#?}"
    );
    assert_eq!(s.notices(NoticeFormat::Cancelled).len(), 1);
    assert_eq!(c.mock.attempts().await, 3, "the model was not asked again");
    let s = c.send("and x?", &NoOperator).await;
    assert_eq!(s.reason, DoneReason::Stop);
    assert_eq!(s.result(), "5");
    let msgs = messages(&c.mock.chats().await[3]);
    // The interrupted call has its tool message before the new user message.
    assert_eq!(msgs[7]["role"], "tool");
    assert_eq!(msgs[7]["tool_call_id"], "call_2_0");
    assert_eq!(msgs[8], json!({"role": "user", "content": "and x?"}));
    c.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_during_a_run_interrupts_it() {
    cancel_a_run(|i| {
        matches!(&i.body, ItemBody::Output { chunk, .. }
            if matches!(&chunk.body, Body::Console { content: Some(t), .. } if t.contains("sleeping")))
    })
    .await;
}

/// Regression: an interrupt that reaches the session just as the run starts (before the
/// interpreter is executing the code) was lost, and a cancelled message waited for the run
/// timeout.
#[tokio::test(flavor = "multi_thread")]
async fn cancel_right_as_a_run_starts_is_not_lost() {
    cancel_a_run(|i| {
        matches!(&i.body, ItemBody::Output { chunk, .. }
            if matches!(chunk.body, Body::Status { format: StatusFormat::Started, .. }))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_while_the_program_waits_for_input() {
    let mut c = Chat::new(confirm()).await;
    c.mock
        .script(json!([
            {"tool_calls": [exec("python", "y = 3\nname = input('name? ')")]},
            {"tool_calls": [exec("python", "print(y)")]},
            {"text": "ok"},
        ]))
        .await;
    let mut op = Scripted::new(vec![Decision::Run, Decision::Run], vec![]);
    op.silent_on_input = true;
    let waiting = |i: &Item| matches!(i.body, ItemBody::Input { .. });
    let s = send_cancelling(&mut c.agent, "ask", &op, waiting).await;
    assert_eq!(s.reason, DoneReason::Cancelled);
    assert!(s.elapsed < Duration::from_secs(5), "{:?}", s.elapsed);
    let r = s.result();
    assert!(r.contains("[the user interrupted the run]"), "{r}");
    let s = c.send("and y?", &op).await;
    assert_eq!(s.reason, DoneReason::Stop);
    assert_eq!(s.result(), "3");
    c.finish().await;
}

// --- the API key -------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn the_api_key_is_sent_and_never_shown() {
    let mut c = Chat::new(auto()).await;
    c.mock
        .script(json!([
            {"tool_calls": [exec("python", "print(6*7)")]},
            {"text": "ok"},
        ]))
        .await;
    let s = c.send("go", &NoOperator).await;
    assert_eq!(s.reason, DoneReason::Stop);
    for r in c.mock.chats().await {
        assert_eq!(r["headers"]["authorization"], format!("Bearer {KEY}"));
    }
    assert!(!s.json().contains(KEY));
    let saved = serde_json::to_string(&c.agent.save()).unwrap();
    assert!(!saved.contains(KEY));
    assert!(!format!("{:?}", c.agent.provider()).contains(KEY));
    c.finish().await;
}

mod traces {
    use std::io::Write;
    use std::sync::{Arc, Mutex, OnceLock};

    /// Everything every thread logs, from the moment it is installed.
    #[derive(Clone, Default)]
    pub struct Buf(pub Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A global TRACE subscriber (and `log` bridge) writing into one buffer.
    pub fn capture() -> Buf {
        static BUF: OnceLock<Buf> = OnceLock::new();
        BUF.get_or_init(|| {
            let buf = Buf::default();
            let b = buf.clone();
            tracing_subscriber::fmt()
                .with_max_level(tracing::Level::TRACE)
                .with_ansi(false)
                .with_writer(move || b.clone())
                .try_init()
                .expect("no other global subscriber");
            buf
        })
        .clone()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_key_never_reaches_the_traces() {
    let buf = traces::capture();
    let mut c = Chat::new(auto()).await;
    c.mock
        .script(json!([
            {"status": 401},
            {"status": 503},
            {"status": 429},
            {"tool_calls": [exec("python", "print(6*7)")]},
            {"text": "ok"},
        ]))
        .await;
    let s = c.send("go", &NoOperator).await;
    assert_eq!(s.reason, DoneReason::Error);
    let s = c.send("go", &NoOperator).await;
    assert_eq!(s.reason, DoneReason::Stop, "{:#?}", s.items);
    assert_eq!(s.notices(NoticeFormat::Retry).len(), 2);
    c.finish().await;
    let text = String::from_utf8_lossy(&buf.0.lock().unwrap()).into_owned();
    assert!(
        text.contains("retrying the model request"),
        "the capture works: {text}"
    );
    assert!(text.contains("TRACE"), "trace level is on");
    assert!(!text.contains(KEY), "the key is in the traces");
    assert!(!text.contains("SECRET"), "part of the key is in the traces");
}

// --- saving and loading ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_saved_conversation_continues_after_loading() {
    let mut c = Chat::new(auto()).await;
    c.mock
        .script(json!([
            {"tool_calls": [exec("python", "y = 6*7\nprint(y)")]},
            {"text": "y is 42"},
            {"text": "still 42"},
        ]))
        .await;
    let s = c.send("compute y", &NoOperator).await;
    assert_eq!(s.reason, DoneReason::Stop);
    let saved = serde_json::to_string(&c.agent.save()).unwrap();
    let before = c.agent.messages().to_vec();
    assert_eq!(before.len(), 4);

    let back: spindle_protocol::conversation::SavedConversation =
        serde_json::from_str(&saved).unwrap();
    let mut agent = Agent::new(provider_at(&c.mock.url(), fast()), c.runner.clone(), auto());
    agent.load(back).unwrap();
    assert_eq!(agent.log(), c.agent.log());
    let s2 = send(&mut agent, "and now?", &NoOperator).await;
    assert_eq!(s2.reason, DoneReason::Stop);
    assert_eq!(s2.text(), "still 42");
    // Items go on numbering after the loaded ones.
    assert_eq!(s2.items[0].seq, s.items.last().unwrap().seq + 1);
    let reqs = c.mock.chats().await;
    assert_eq!(reqs.len(), 3);
    let msgs = messages(&reqs[2]);
    assert_eq!(msgs[0]["role"], "system");
    assert_eq!(&msgs[1..5], &before[..]);
    assert_eq!(msgs[5], json!({"role": "user", "content": "and now?"}));
    // The log coalesced streamed items into one per message.
    let log = agent.log();
    assert!(log.iter().any(|i| i.body
        == ItemBody::Message {
            content: Some("y is 42".into())
        }));
    c.finish().await;
}
