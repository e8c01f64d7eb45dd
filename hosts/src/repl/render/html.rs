//! HTML as terminal text: the scanner and table layout live in `spindle_llm::html`, shared with
//! the output policy (which renders the same tables as Markdown for models).

pub use spindle_llm::html::*;
