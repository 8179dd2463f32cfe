//! The CWM chat layout: a message list rendered into one prompt string for raw completions.
//!
//! Checked against CWM's released repository (facebookresearch/cwm: `PROMPTING_GUIDE.md`,
//! `cwm/text/tokenizers.py`, `cwm/text/datatypes.py`, `cwm/rl/envs/dialog.py`):
//! - the transcript starts with `<|begin_of_text|>`;
//! - each message is `<|start_header_id|>ROLE<|end_header_id|>` + `"\n\n"` + body + `<|eot_id|>`,
//!   with nothing between messages;
//! - ROLE is `system`, `user`, `assistant` or `tool: NAME` (the tool's name after `tool: `);
//! - bodies are stripped of surrounding whitespace except tool outputs (kept verbatim) and the
//!   open assistant turn;
//! - the prompt ends with an open assistant header (`...assistant<|end_header_id|>\n\n`), optionally
//!   followed by a prefix such as `<think>\n` in reasoning mode, and the model's reply ends at
//!   `<|eot_id|>` (its tokenizer also stops on `<|eom_id|>` and `<|end_of_text|>`).
//!
//! Servers that add a BOS token themselves (vLLM's completions do by default) would double
//! `<|begin_of_text|>`; set `begin_of_text` to an empty string for them.

use serde::{Deserialize, Serialize};

use crate::types::{ChatMessage, ChatRole};

/// The special tokens and spacing of the CWM transcript; defaults match CWM's release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CwmLayout {
    /// Written once at the very start (default `<|begin_of_text|>`; empty when the server adds BOS).
    pub begin_of_text: String,
    /// Opens a message header (default `<|start_header_id|>`).
    pub start_header: String,
    /// Closes a message header (default `<|end_header_id|>`).
    pub end_header: String,
    /// Between header and body (default two newlines).
    pub after_header: String,
    /// Ends each message (default `<|eot_id|>`).
    pub end_of_turn: String,
    /// Role name prefix for tool outputs, followed by the tool name (default `tool: `).
    pub tool_role_prefix: String,
    /// Text after the final assistant header, e.g. `<think>\n` for reasoning mode (default empty).
    pub assistant_prefix: String,
    /// Strip whitespace around system, user and assistant bodies as CWM does (default on).
    pub strip_bodies: bool,
    /// Stop sequences to send with the completion (default: the end-of-turn token).
    pub stop: Vec<String>,
}

impl Default for CwmLayout {
    fn default() -> Self {
        CwmLayout {
            begin_of_text: "<|begin_of_text|>".into(),
            start_header: "<|start_header_id|>".into(),
            end_header: "<|end_header_id|>".into(),
            after_header: "\n\n".into(),
            end_of_turn: "<|eot_id|>".into(),
            tool_role_prefix: "tool: ".into(),
            assistant_prefix: String::new(),
            strip_bodies: true,
            stop: vec!["<|eot_id|>".into()],
        }
    }
}

/// Why a message list cannot be laid out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CwmRenderError {
    /// A tool message has no tool name, so its `tool: NAME` role cannot be written.
    #[error(
        "message {index} is a tool output with no tool name; the CWM layout needs `tool: NAME`"
    )]
    ToolWithoutName {
        /// The message's position in the list.
        index: usize,
    },
}

impl CwmLayout {
    /// The role text of a message's header.
    fn role_text(&self, index: usize, message: &ChatMessage) -> Result<String, CwmRenderError> {
        match message.role {
            ChatRole::Tool => match message.name.as_deref().map(str::trim) {
                Some(name) if !name.is_empty() => Ok(format!("{}{}", self.tool_role_prefix, name)),
                _ => Err(CwmRenderError::ToolWithoutName { index }),
            },
            role => Ok(role.as_str().to_string()),
        }
    }

    fn push_header(&self, out: &mut String, role: &str) {
        out.push_str(&self.start_header);
        out.push_str(role.trim());
        out.push_str(&self.end_header);
        out.push_str(&self.after_header);
    }

    /// Renders `messages` into a prompt that ends with an open assistant turn for the model to continue.
    pub fn render_prompt(&self, messages: &[ChatMessage]) -> Result<String, CwmRenderError> {
        let mut out = String::new();
        out.push_str(&self.begin_of_text);
        for (index, message) in messages.iter().enumerate() {
            let role = self.role_text(index, message)?;
            self.push_header(&mut out, &role);
            let body = if self.strip_bodies && message.role != ChatRole::Tool {
                message.content.trim()
            } else {
                message.content.as_str()
            };
            out.push_str(body);
            out.push_str(&self.end_of_turn);
        }
        self.push_header(&mut out, ChatRole::Assistant.as_str());
        out.push_str(&self.assistant_prefix);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_layout_matches_cwm_release() {
        let messages = vec![
            ChatMessage::system("  You are helpful.\n"),
            ChatMessage::user("Fix it."),
            ChatMessage::assistant("<tool: bash>\nls\n</tool>\n"),
            ChatMessage::tool_output("bash", "<output>\na\n</output>\n"),
        ];
        let prompt = CwmLayout::default().render_prompt(&messages).unwrap();
        let expect = "<|begin_of_text|>\
            <|start_header_id|>system<|end_header_id|>\n\nYou are helpful.<|eot_id|>\
            <|start_header_id|>user<|end_header_id|>\n\nFix it.<|eot_id|>\
            <|start_header_id|>assistant<|end_header_id|>\n\n<tool: bash>\nls\n</tool><|eot_id|>\
            <|start_header_id|>tool: bash<|end_header_id|>\n\n<output>\na\n</output>\n<|eot_id|>\
            <|start_header_id|>assistant<|end_header_id|>\n\n";
        assert_eq!(prompt, expect);
        assert_eq!(CwmLayout::default().stop, vec!["<|eot_id|>".to_string()]);
    }

    #[test]
    fn prefix_and_custom_tokens() {
        let layout = CwmLayout {
            begin_of_text: String::new(),
            assistant_prefix: "<think>\n".into(),
            ..CwmLayout::default()
        };
        let prompt = layout.render_prompt(&[ChatMessage::user("q")]).unwrap();
        assert_eq!(
            prompt,
            "<|start_header_id|>user<|end_header_id|>\n\nq<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\n<think>\n"
        );
    }

    #[test]
    fn tool_message_needs_a_name() {
        let mut message = ChatMessage::tool_output("bash", "x");
        message.name = None;
        let error = CwmLayout::default()
            .render_prompt(&[ChatMessage::user("q"), message])
            .unwrap_err();
        assert_eq!(error, CwmRenderError::ToolWithoutName { index: 1 });
    }
}
