//! Where the model is and how the loop behaves: flags, then `SPINDLE_LLM_*` environment
//! variables, then `$XDG_CONFIG_HOME/spindle/config.toml`, then `OPENAI_BASE_URL` /
//! `OPENAI_API_KEY`. The first that sets a value wins.
//!
//! ```toml
//! # ~/.config/spindle/config.toml
//! [llm]
//! base_url = "http://127.0.0.1:11434/v1"   # Ollama; OpenAI is https://api.openai.com/v1
//! model = "qwen2.5-coder:7b"
//! api_key = "${OPENAI_API_KEY}"            # ${VAR} is read from the environment
//! vision = false                            # send images to the model
//! stream = true
//! auto_run = false                          # run code without asking
//! max_rounds = 10                           # tool rounds per message
//! output_budget = 8192                      # bytes of output the model sees per run
//! run_timeout = 120                         # seconds per run
//! idle_timeout = 120                        # seconds of silence from the endpoint
//! max_retries = 3
//! tools = true                              # false: run fenced code blocks instead
//! system_prompt = "…"                       # replaces the default
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::provider::{Endpoint, ProviderSettings, Secret};

/// OpenAI's own endpoint, used when only `OPENAI_API_KEY` is set.
pub const OPENAI_BASE: &str = "https://api.openai.com/v1";
/// The model used with OpenAI's endpoint when none is named.
pub const OPENAI_DEFAULT_MODEL: &str = "gpt-4o-mini";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "no model endpoint is configured. Set one of:\n  \
         --base-url URL --model NAME (for example --base-url http://127.0.0.1:11434/v1 --model qwen2.5-coder:7b for Ollama)\n  \
         SPINDLE_LLM_BASE_URL, SPINDLE_LLM_MODEL and SPINDLE_LLM_API_KEY\n  \
         OPENAI_API_KEY (for OpenAI itself; OPENAI_BASE_URL for another server)\n  \
         or [llm] base_url/model/api_key in {path}"
    )]
    NoEndpoint { path: String },
    #[error(
        "no model is named for {base_url}: set --model or SPINDLE_LLM_MODEL (or model in {path})"
    )]
    NoModel { base_url: String, path: String },
    #[error("cannot read {path}: {detail}")]
    File { path: String, detail: String },
    #[error(
        "{what} is not a valid URL: {value:?} (it should look like http://127.0.0.1:11434/v1)"
    )]
    BadUrl { what: &'static str, value: String },
}

/// Every setting, each optional: what flags or a native `chat` request give, and also the
/// `[llm]` table of the config file (where `config_file` is not a key).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overrides {
    pub base_url: Option<String>,
    pub model: Option<String>,
    pub api_key: Option<String>,
    pub vision: Option<bool>,
    pub stream: Option<bool>,
    pub auto_run: Option<bool>,
    pub max_rounds: Option<u32>,
    pub output_budget: Option<usize>,
    pub run_timeout: Option<f64>,
    pub idle_timeout: Option<f64>,
    pub max_retries: Option<u32>,
    pub tools: Option<bool>,
    pub system_prompt: Option<String>,
    /// Another config file than `$XDG_CONFIG_HOME/spindle/config.toml`.
    #[serde(skip)]
    pub config_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
struct FileRoot {
    #[serde(default)]
    llm: Overrides,
}

/// Everything the loop needs, resolved.
#[derive(Debug, Clone)]
pub struct ChatConfig {
    pub endpoint: Endpoint,
    pub provider: ProviderSettings,
    pub loop_: LoopSettings,
}

/// How the loop behaves.
#[derive(Debug, Clone)]
pub struct LoopSettings {
    /// Run code without asking.
    pub auto_run: bool,
    /// Model requests per user message before the loop stops.
    pub max_rounds: u32,
    /// Offer the `execute` tool; without it, fenced code blocks are run.
    pub tools: bool,
    /// Send images to the model.
    pub vision: bool,
    /// What the model sees of each run.
    pub policy: crate::policy::Policy,
    /// Time limit of each run.
    pub run_timeout: Option<Duration>,
    pub system_prompt: Option<String>,
}

impl Default for LoopSettings {
    fn default() -> Self {
        Self {
            auto_run: false,
            max_rounds: 10,
            tools: true,
            vision: false,
            policy: crate::policy::Policy::default(),
            run_timeout: Some(Duration::from_secs(120)),
            system_prompt: None,
        }
    }
}

/// `$XDG_CONFIG_HOME/spindle/config.toml` (`~/.config/…` without it).
pub fn default_path(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let base = env("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|h| Path::new(&h).join(".config")))?;
    Some(base.join("spindle").join("config.toml"))
}

/// Replace `${VAR}` with the variable's value (empty when unset).
fn expand(s: &str, env: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        match rest[i + 2..].find('}') {
            Some(j) => {
                out.push_str(&env(&rest[i + 2..i + 2 + j]).unwrap_or_default());
                rest = &rest[i + 3 + j..];
            }
            None => {
                out.push_str(&rest[i..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

fn read_file(path: &Path) -> Result<Overrides, ConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Overrides::default()),
        Err(e) => {
            return Err(ConfigError::File {
                path: path.display().to_string(),
                detail: e.to_string(),
            })
        }
    };
    toml::from_str::<FileRoot>(&text)
        .map(|r| r.llm)
        .map_err(|e| ConfigError::File {
            path: path.display().to_string(),
            detail: e.message().to_string(),
        })
}

fn check_url(what: &'static str, v: String) -> Result<String, ConfigError> {
    let ok = (v.starts_with("http://") || v.starts_with("https://")) && v.len() > 8;
    if ok {
        Ok(v.trim_end_matches('/').to_string())
    } else {
        Err(ConfigError::BadUrl { what, value: v })
    }
}

fn secs(v: f64) -> Option<Duration> {
    (v.is_finite() && v > 0.0).then(|| Duration::from_secs_f64(v.min(1e7)))
}

impl ChatConfig {
    /// Resolve from overrides, the process environment and the config file.
    pub fn resolve(o: &Overrides) -> Result<ChatConfig, ConfigError> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Self::resolve_with(o, &env)
    }

    /// Resolve with `env` standing for the environment (for tests).
    pub fn resolve_with(
        o: &Overrides,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<ChatConfig, ConfigError> {
        let path = o.config_file.clone().or_else(|| default_path(env));
        let shown = path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "~/.config/spindle/config.toml".into());
        let f = match &path {
            Some(p) => read_file(p)?,
            None => Overrides::default(),
        };
        let pick = |flag: &Option<String>, var: &str, file: &Option<String>| {
            flag.clone()
                .filter(|s| !s.is_empty())
                .or_else(|| env(var))
                .or_else(|| {
                    file.as_ref()
                        .map(|s| expand(s, env))
                        .filter(|s| !s.is_empty())
                })
        };
        let base = pick(&o.base_url, "SPINDLE_LLM_BASE_URL", &f.base_url)
            .map(|v| ("base URL", v))
            .or_else(|| env("OPENAI_BASE_URL").map(|v| ("OPENAI_BASE_URL", v)));
        let key =
            pick(&o.api_key, "SPINDLE_LLM_API_KEY", &f.api_key).or_else(|| env("OPENAI_API_KEY"));
        let model = pick(&o.model, "SPINDLE_LLM_MODEL", &f.model);
        let base_url = match base {
            Some((what, v)) => check_url(what, v)?,
            None if key.is_some() => OPENAI_BASE.to_string(),
            None => return Err(ConfigError::NoEndpoint { path: shown }),
        };
        let model = match model {
            Some(m) => m,
            None if base_url == OPENAI_BASE => OPENAI_DEFAULT_MODEL.to_string(),
            None => {
                return Err(ConfigError::NoModel {
                    base_url,
                    path: shown,
                })
            }
        };
        let mut provider = ProviderSettings::default();
        if let Some(s) = o.stream.or(f.stream) {
            provider.stream = s;
        }
        if let Some(d) = o.idle_timeout.or(f.idle_timeout).and_then(secs) {
            provider.idle_timeout = d;
        }
        if let Some(n) = o.max_retries.or(f.max_retries) {
            provider.max_retries = n.min(20);
        }
        let mut l = LoopSettings {
            // Images go to OpenAI's models by default; other servers say so explicitly.
            vision: base_url == OPENAI_BASE,
            ..LoopSettings::default()
        };
        if let Some(v) = o.vision.or(f.vision) {
            l.vision = v;
        }
        if let Some(v) = o.auto_run.or(f.auto_run) {
            l.auto_run = v;
        }
        if let Some(n) = o.max_rounds.or(f.max_rounds) {
            l.max_rounds = n.max(1);
        }
        if let Some(n) = o.output_budget.or(f.output_budget) {
            l.policy.budget = n.max(256);
        }
        if let Some(t) = o.run_timeout.or(f.run_timeout) {
            l.run_timeout = secs(t);
        }
        if let Some(t) = o.tools.or(f.tools) {
            l.tools = t;
        }
        l.system_prompt = o.system_prompt.clone().or_else(|| f.system_prompt.clone());
        Ok(ChatConfig {
            endpoint: Endpoint {
                base_url,
                model,
                api_key: Secret::new(key.unwrap_or_default()),
            },
            provider,
            loop_: l,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn nothing_configured_says_what_to_set() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().to_str().unwrap().to_string();
        let e = ChatConfig::resolve_with(&Overrides::default(), &env_of(&[("HOME", &home)]))
            .unwrap_err();
        let text = e.to_string();
        for want in [
            "--base-url",
            "SPINDLE_LLM_BASE_URL",
            "OPENAI_API_KEY",
            "config.toml",
        ] {
            assert!(text.contains(want), "{text}");
        }
    }

    #[test]
    fn precedence_flag_env_file_openai() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("spindle");
        std::fs::create_dir_all(&cfg).unwrap();
        std::fs::write(
            cfg.join("config.toml"),
            "[llm]\nbase_url = \"http://file:1/v1/\"\nmodel = \"file-model\"\napi_key = \"${MY_KEY}\"\nvision = true\n",
        )
        .unwrap();
        let x = dir.path().to_str().unwrap().to_string();
        let env = env_of(&[
            ("XDG_CONFIG_HOME", &x),
            ("MY_KEY", "k-file"),
            ("OPENAI_BASE_URL", "http://openai-env:1/v1"),
        ]);
        let c = ChatConfig::resolve_with(&Overrides::default(), &env).unwrap();
        assert_eq!(c.endpoint.base_url, "http://file:1/v1");
        assert_eq!(c.endpoint.model, "file-model");
        assert_eq!(c.endpoint.api_key.expose(), "k-file");
        assert!(c.loop_.vision);
        let env = env_of(&[
            ("XDG_CONFIG_HOME", &x),
            ("SPINDLE_LLM_BASE_URL", "http://env:1/v1"),
            ("SPINDLE_LLM_MODEL", "env-model"),
        ]);
        let c = ChatConfig::resolve_with(&Overrides::default(), &env).unwrap();
        assert_eq!(c.endpoint.base_url, "http://env:1/v1");
        assert_eq!(c.endpoint.model, "env-model");
        let o = Overrides {
            model: Some("flag-model".into()),
            ..Overrides::default()
        };
        let c = ChatConfig::resolve_with(&o, &env).unwrap();
        assert_eq!(c.endpoint.model, "flag-model");
    }

    #[test]
    fn openai_key_alone_means_openai() {
        let c =
            ChatConfig::resolve_with(&Overrides::default(), &env_of(&[("OPENAI_API_KEY", "sk")]))
                .unwrap();
        assert_eq!(c.endpoint.base_url, OPENAI_BASE);
        assert_eq!(c.endpoint.model, OPENAI_DEFAULT_MODEL);
        assert!(c.loop_.vision);
    }

    #[test]
    fn a_bad_file_or_url_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[llm]\nmodle = 1\n").unwrap();
        let o = Overrides {
            config_file: Some(p),
            ..Overrides::default()
        };
        let e = ChatConfig::resolve_with(&o, &env_of(&[])).unwrap_err();
        assert!(e.to_string().contains("modle"), "{e}");
        let o = Overrides {
            base_url: Some("localhost:11434".into()),
            model: Some("m".into()),
            config_file: Some(dir.path().join("none.toml")),
            ..Overrides::default()
        };
        let e = ChatConfig::resolve_with(&o, &env_of(&[])).unwrap_err();
        assert!(e.to_string().contains("not a valid URL"), "{e}");
    }
}
