//! Chat on top of [`generate`](super::generate): ChatML rendering and history trimmed to the
//! context window.

/// One chat message.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// ChatML: `<|im_start|>role\ncontent<|im_end|>\n` per message, then the assistant's header.
pub fn render_chatml(messages: &[Message]) -> String {
    let mut s = String::new();
    for m in messages {
        s.push_str(&format!("<|im_start|>{}\n{}<|im_end|>\n", m.role, m.content));
    }
    s.push_str("<|im_start|>assistant\n");
    s
}

/// Encodes the conversation so that it plus `reserve` new tokens fits in `ctx` tokens, dropping
/// the oldest turns after a leading system message. None when even the last message alone is
/// too long.
pub fn fit_history(
    history: &mut Vec<Message>,
    ctx: usize,
    reserve: usize,
    encode: impl Fn(&str) -> Vec<u32>,
) -> Option<Vec<u32>> {
    let keep_first = usize::from(history.first().is_some_and(|m| m.role == "system"));
    loop {
        let ids = encode(&render_chatml(history));
        if ids.len() + reserve <= ctx {
            return Some(ids);
        }
        if history.len() <= keep_first + 1 {
            return None;
        }
        history.remove(keep_first);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, content: &str) -> Message {
        Message { role: role.into(), content: content.into() }
    }

    #[test]
    fn chatml_layout() {
        let s = render_chatml(&[msg("user", "你好")]);
        assert_eq!(s, "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n");
    }

    #[test]
    fn oldest_turns_go_first_and_system_stays() {
        let enc = |s: &str| vec![0u32; s.chars().count()];
        let mut h = vec![msg("system", "s"), msg("user", "aaaa"), msg("assistant", "bbbb"), msg("user", "c")];
        let full = enc(&render_chatml(&h)).len();
        let ids = fit_history(&mut h, full - 1, 0, enc).unwrap();
        assert!(ids.len() < full);
        assert_eq!(h.len(), 3);
        assert_eq!((h[0].role.as_str(), h[1].role.as_str()), ("system", "assistant"));
        assert!(fit_history(&mut h, 5, 0, enc).is_none());
    }
}
