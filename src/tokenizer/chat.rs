//! ChatML: `<|im_start|>role\ncontent<|im_end|>\n` per message. The jinja template stored in
//! `tokenizer_config.json` and [`render_chatml`] produce the same text (checked against
//! transformers by `tools/make_tok_fixtures.py`).

/// The chat template written to `tokenizer_config.json` (`chat_template`).
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Renders `(role, content)` messages with ChatML; `add_generation_prompt` appends the opening of
/// an assistant turn for the model to complete.
pub fn render_chatml<R: AsRef<str>, C: AsRef<str>>(messages: &[(R, C)], add_generation_prompt: bool) -> String {
    let mut out = String::new();
    for (role, content) in messages {
        out.push_str("<|im_start|>");
        out.push_str(role.as_ref());
        out.push('\n');
        out.push_str(content.as_ref());
        out.push_str("<|im_end|>\n");
    }
    if add_generation_prompt {
        out.push_str("<|im_start|>assistant\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_turns_and_generation_prompt() {
        let msgs = [("system", "你是诗人。"), ("user", "写一首诗")];
        assert_eq!(
            render_chatml(&msgs, true),
            "<|im_start|>system\n你是诗人。<|im_end|>\n<|im_start|>user\n写一首诗<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(render_chatml::<&str, &str>(&[], false), "");
    }
}
