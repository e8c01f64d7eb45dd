//! Comms: the Jupyter comm protocol's messages, in both directions.
//!
//! A comm is a channel between code in the session and a frontend (ipywidgets is the best known
//! user). Either side opens one (`comm_open`, with a target name the other side has registered),
//! sends `comm_msg`s on it and closes it (`comm_close`). From the session they arrive as
//! [`Body::Comm`](crate::Body::Comm) chunks in the stream of the request that was running (or
//! between requests); towards the session a host hands one to `Session::comm`.
//!
//! Binary buffers (widgets send arrays and images this way) travel as base64 strings.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Which comm message this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CommKind {
    /// Open a comm: `target_name` says which handler on the other side takes it.
    CommOpen,
    /// A message on an open comm.
    CommMsg,
    /// Close a comm.
    CommClose,
}

impl CommKind {
    /// The Jupyter message type (`comm_open`, `comm_msg`, `comm_close`).
    pub fn msg_type(self) -> &'static str {
        match self {
            CommKind::CommOpen => "comm_open",
            CommKind::CommMsg => "comm_msg",
            CommKind::CommClose => "comm_close",
        }
    }

    /// The kind for a Jupyter message type.
    pub fn from_msg_type(msg_type: &str) -> Option<Self> {
        Some(match msg_type {
            "comm_open" => CommKind::CommOpen,
            "comm_msg" => CommKind::CommMsg,
            "comm_close" => CommKind::CommClose,
            _ => return None,
        })
    }
}

/// One comm message, in either direction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CommMessage {
    pub msg_type: CommKind,
    /// The comm's id (a UUID chosen by the side that opened it).
    pub comm_id: String,
    /// On `comm_open`: the target that should take the comm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_name: Option<String>,
    /// On `comm_open`: a module the target lives in (optional in Jupyter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_module: Option<String>,
    /// The payload.
    #[serde(default)]
    pub data: Map<String, Value>,
    /// The message's metadata (ipywidgets puts its protocol version here).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub metadata: Map<String, Value>,
    /// Binary buffers, base64.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub buffers: Vec<String>,
}

impl CommMessage {
    /// The Jupyter `content` of this message: `comm_id`, `data`, and on `comm_open` the
    /// target's name and module.
    pub fn jupyter_content(&self) -> Value {
        let mut c = Map::new();
        c.insert("comm_id".into(), Value::String(self.comm_id.clone()));
        c.insert("data".into(), Value::Object(self.data.clone()));
        if self.msg_type == CommKind::CommOpen {
            c.insert(
                "target_name".into(),
                Value::String(self.target_name.clone().unwrap_or_default()),
            );
            if let Some(m) = &self.target_module {
                c.insert("target_module".into(), Value::String(m.clone()));
            }
        }
        Value::Object(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn kinds_round_trip_through_jupyter_names() {
        for k in [CommKind::CommOpen, CommKind::CommMsg, CommKind::CommClose] {
            assert_eq!(CommKind::from_msg_type(k.msg_type()), Some(k));
            assert_eq!(serde_json::to_value(k).unwrap(), json!(k.msg_type()));
        }
        assert_eq!(CommKind::from_msg_type("comm_info_request"), None);
    }

    #[test]
    fn jupyter_content_has_the_target_only_on_open() {
        let mut m = CommMessage {
            msg_type: CommKind::CommOpen,
            comm_id: "c1".into(),
            target_name: Some("jupyter.widget".into()),
            target_module: None,
            data: Map::new(),
            metadata: Map::new(),
            buffers: vec![],
        };
        assert_eq!(
            m.jupyter_content(),
            json!({"comm_id":"c1","data":{},"target_name":"jupyter.widget"})
        );
        m.msg_type = CommKind::CommMsg;
        assert_eq!(m.jupyter_content(), json!({"comm_id":"c1","data":{}}));
    }
}
