//! Recognises content that looks like a credential, so it is held back
//! instead of sent: private keys and the token formats of common services.
//! Erring towards holding back is fine: a held file is reported, never lost.

use memchr::memmem;

/// How much of a file is looked at.
pub const SNIFF_BYTES: usize = 8 << 20;

/// What kind of credential `content` seems to hold, if any.
pub fn looks_secret(content: &[u8]) -> Option<&'static str> {
    let content = &content[..content.len().min(SNIFF_BYTES)];
    if has_private_key(content) {
        return Some("a private key");
    }
    if let Some(t) = TOKENS.iter().find(|t| has_token(content, t)) {
        return Some(t.what);
    }
    if has_telegram_bot_token(content) {
        return Some("a Telegram bot token");
    }
    None
}

fn has_private_key(content: &[u8]) -> bool {
    memmem::find_iter(content, b"-----BEGIN ").any(|at| {
        let line = &content[at + 11..];
        let end = memchr::memchr(b'\n', line).unwrap_or(line.len()).min(80);
        let head = &line[..end];
        memmem::find(head, b"PRIVATE KEY").is_some()
    })
}

/// A token: a fixed prefix, then at least `min` characters of `charset`,
/// not glued to a word character before the prefix.
struct Token {
    prefix: &'static [u8],
    min: usize,
    charset: fn(u8) -> bool,
    /// The characters after the prefix must mix cases and digits (keeps
    /// ordinary words such as `sk-learn-…` out).
    mixed: bool,
    what: &'static str,
}

fn alnum(b: u8) -> bool {
    b.is_ascii_alphanumeric()
}
fn upper_alnum(b: u8) -> bool {
    b.is_ascii_uppercase() || b.is_ascii_digit()
}
fn token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

const TOKENS: &[Token] = &[
    Token {
        prefix: b"AKIA",
        min: 16,
        charset: upper_alnum,
        mixed: false,
        what: "an AWS access key",
    },
    Token {
        prefix: b"ASIA",
        min: 16,
        charset: upper_alnum,
        mixed: false,
        what: "an AWS access key",
    },
    Token {
        prefix: b"ghp_",
        min: 36,
        charset: alnum,
        mixed: false,
        what: "a GitHub token",
    },
    Token {
        prefix: b"gho_",
        min: 36,
        charset: alnum,
        mixed: false,
        what: "a GitHub token",
    },
    Token {
        prefix: b"ghs_",
        min: 36,
        charset: alnum,
        mixed: false,
        what: "a GitHub token",
    },
    Token {
        prefix: b"ghu_",
        min: 36,
        charset: alnum,
        mixed: false,
        what: "a GitHub token",
    },
    Token {
        prefix: b"github_pat_",
        min: 40,
        charset: token_char,
        mixed: false,
        what: "a GitHub token",
    },
    Token {
        prefix: b"glpat-",
        min: 20,
        charset: token_char,
        mixed: false,
        what: "a GitLab token",
    },
    Token {
        prefix: b"xoxb-",
        min: 20,
        charset: token_char,
        mixed: false,
        what: "a Slack token",
    },
    Token {
        prefix: b"xoxp-",
        min: 20,
        charset: token_char,
        mixed: false,
        what: "a Slack token",
    },
    Token {
        prefix: b"sk-ant-",
        min: 32,
        charset: token_char,
        mixed: false,
        what: "an Anthropic API key",
    },
    Token {
        prefix: b"sk-",
        min: 32,
        charset: token_char,
        mixed: true,
        what: "an API secret key",
    },
    Token {
        prefix: b"sk_live_",
        min: 16,
        charset: alnum,
        mixed: false,
        what: "a Stripe secret key",
    },
    Token {
        prefix: b"rk_live_",
        min: 16,
        charset: alnum,
        mixed: false,
        what: "a Stripe secret key",
    },
    Token {
        prefix: b"AIza",
        min: 35,
        charset: token_char,
        mixed: false,
        what: "a Google API key",
    },
];

fn has_token(content: &[u8], t: &Token) -> bool {
    memmem::find_iter(content, t.prefix).any(|at| {
        if at > 0 && token_char(content[at - 1]) {
            return false;
        }
        let rest = &content[at + t.prefix.len()..];
        let n = rest.iter().take_while(|b| (t.charset)(**b)).count();
        if n < t.min {
            return false;
        }
        !t.mixed || {
            let body = &rest[..n];
            body.iter().any(u8::is_ascii_uppercase)
                && body.iter().any(u8::is_ascii_lowercase)
                && body.iter().any(u8::is_ascii_digit)
        }
    })
}

/// Telegram bot tokens: 8–10 digits, a colon, then `AA` and 33 more
/// token characters.
fn has_telegram_bot_token(content: &[u8]) -> bool {
    memmem::find_iter(content, b":AA").any(|at| {
        let digits = content[..at]
            .iter()
            .rev()
            .take_while(|b| b.is_ascii_digit())
            .count();
        let rest = &content[at + 1..];
        let n = rest.iter().take_while(|b| token_char(**b)).count();
        (8..=10).contains(&digits) && n >= 35
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_recognised() {
        let cases: &[(&str, &str)] = &[
            (
                "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXkt\n",
                "a private key",
            ),
            ("key:\n-----BEGIN RSA PRIVATE KEY-----\n", "a private key"),
            ("-----BEGIN PRIVATE KEY-----", "a private key"),
            (
                "aws_access_key_id = AKIAIOSFODNN7EXAMPLE\n",
                "an AWS access key",
            ),
            (
                "token: ghp_abcdefghijklmnopqrstuvwxyz0123456789",
                "a GitHub token",
            ),
            (
                "SLACK=xoxb-123456789012-1234567890123-abcdefghij",
                "a Slack token",
            ),
            (
                "OPENAI_API_KEY=sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z0123",
                "an API secret key",
            ),
            (
                "ANTHROPIC_API_KEY=sk-ant-api03-abcdefghijklmnopqrstuvwxyz012345",
                "an Anthropic API key",
            ),
            (
                "bot: 123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw4",
                "a Telegram bot token",
            ),
        ];
        for (text, what) in cases {
            assert_eq!(looks_secret(text.as_bytes()), Some(*what), "{text:?}");
        }
    }

    #[test]
    fn ordinary_notes_are_not() {
        for text in [
            "# Notes\nThe deploy uses -----BEGIN CERTIFICATE----- blocks.\n",
            "we use sk-learn-and-pytorch-for-everything-in-the-lab today",
            "ask-for-help-with-the-configuration-of-the-new-server-today",
            "AKIA is a prefix; AKIAshort is not a key",
            "see https://github.com/ghp_ (docs)",
            "time 12:30:45 and ratio 3:AA",
        ] {
            assert_eq!(looks_secret(text.as_bytes()), None, "{text:?}");
        }
    }
}
