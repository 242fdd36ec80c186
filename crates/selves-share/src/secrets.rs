//! Recognises content that looks like a credential, so it is held back
//! instead of sent: private keys, credential lines of common config files
//! and the token formats of common services (docs/shares.md lists them).
//! Erring towards holding back is fine: a held file is reported, never lost.
//!
//! Every byte of a file is looked at, streaming, with no size limit: a
//! [`Scanner`] is fed the file chunk by chunk and keeps the last
//! [`OVERLAP`] bytes of one chunk to look at with the start of the next,
//! so a credential split across two reads (or two appends) is still seen.
//! Every rule matches at most a few hundred bytes, well inside the overlap.
//!
//! Why a rule list of our own: the maintained rule sets (gitleaks, Nosey
//! Parker) are written for their own engines and hundreds of rules long,
//! and the Rust crates that carry them are young and single-maintainer.
//! These rules are few, precise, and each has a test below.

use regex::bytes::{Regex, RegexSet};
use std::sync::LazyLock;

/// Bytes of one chunk kept to be scanned again with the next; longer than
/// any match of any rule.
pub const OVERLAP: usize = 1024;

struct Rule {
    what: &'static str,
    pattern: &'static str,
    /// A further check on the matched bytes, for what a pattern cannot say.
    check: fn(&[u8]) -> bool,
}

fn any(_: &[u8]) -> bool {
    true
}

/// Generic `sk-…` keys must mix upper case, lower case and digits after
/// the prefix (keeps ordinary words such as `sk-learn-…` out).
fn mixed(m: &[u8]) -> bool {
    let body = &m[m.len().min(3)..];
    body.iter().any(u8::is_ascii_uppercase)
        && body.iter().any(u8::is_ascii_lowercase)
        && body.iter().any(u8::is_ascii_digit)
}

/// Every pattern starts `(?-u)` (bytes, ASCII classes) and is bounded, so
/// a match is never longer than [`OVERLAP`].
const RULES: &[Rule] = &[
    Rule {
        what: "a private key",
        pattern: r"(?-u)-----BEGIN (?:[A-Z0-9]{1,20} ){0,4}PRIVATE KEY",
        check: any,
    },
    Rule {
        what: "a PuTTY private key",
        pattern: r"(?-u)PuTTY-User-Key-File-[0-9]{1,3}:",
        check: any,
    },
    Rule {
        what: "a Kubernetes client key",
        pattern: r#"(?-u)client-key-data:[ \t]*["']?[A-Za-z0-9+/]{20}"#,
        check: any,
    },
    Rule {
        what: "an AWS access key",
        pattern: r"(?-u)\b(?:AKIA|ASIA)[A-Z0-9]{16}",
        check: any,
    },
    Rule {
        what: "an AWS secret key",
        pattern: r#"(?-u)(?i:aws_secret_access_key|aws_secret_key|secret_access_key)["']?[ \t]*[:=][ \t]*["']?[A-Za-z0-9/+]{40}"#,
        check: any,
    },
    Rule {
        what: "a GitHub token",
        pattern: r"(?-u)\b(?:gh[opsur]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{40})",
        check: any,
    },
    Rule {
        what: "a GitLab token",
        pattern: r"(?-u)\bglpat-[A-Za-z0-9_-]{20}",
        check: any,
    },
    Rule {
        what: "a Slack token",
        pattern: r"(?-u)\bxox[abposr]-[A-Za-z0-9-]{20}",
        check: any,
    },
    Rule {
        what: "an Anthropic API key",
        pattern: r"(?-u)\bsk-ant-[A-Za-z0-9_-]{32}",
        check: any,
    },
    Rule {
        what: "an API secret key",
        pattern: r"(?-u)\bsk-[A-Za-z0-9_-]{32,200}",
        check: mixed,
    },
    Rule {
        what: "a Stripe secret key",
        pattern: r"(?-u)\b[rs]k_live_[A-Za-z0-9]{16}",
        check: any,
    },
    Rule {
        what: "a Google API key",
        pattern: r"(?-u)\bAIza[A-Za-z0-9_-]{35}",
        check: any,
    },
    Rule {
        what: "a Hugging Face token",
        pattern: r"(?-u)\bhf_[A-Za-z0-9]{34}",
        check: any,
    },
    Rule {
        what: "an npm token",
        pattern: r"(?-u)\bnpm_[A-Za-z0-9]{36}",
        check: any,
    },
    Rule {
        what: "an npm token",
        pattern: r#"(?-u)(?:_authToken|_auth|_password)[ \t]*=[ \t]*["']?[^\s"'$\{<]{8}"#,
        check: any,
    },
    Rule {
        what: "a .netrc password",
        pattern: r"(?-u)\b(?:machine\s{1,20}\S{1,200}|default)\s{1,20}login\s{1,20}\S{1,200}\s{1,20}password\s{1,20}\S",
        check: any,
    },
    Rule {
        what: "a Telegram bot token",
        pattern: r"(?-u)(?:^|[^0-9])[0-9]{8,10}:AA[A-Za-z0-9_-]{33}",
        check: any,
    },
    Rule {
        what: "a JSON Web Token",
        pattern: r"(?-u)\beyJ[A-Za-z0-9_-]{8,600}\.eyJ[A-Za-z0-9_-]{8}",
        check: any,
    },
    Rule {
        what: "a database URL with a password",
        pattern: r"(?-u)(?i:\b(?:postgres(?:ql)?|mysql|mariadb|mongodb(?:\+srv)?|rediss?|amqps?|mssql|sqlserver|clickhouse|cockroachdb)://)[^\s:/@]{1,100}:[^\s:/@$<\{*][^\s@]{0,200}@",
        check: any,
    },
];

struct Compiled {
    any: RegexSet,
    each: Vec<Regex>,
}

static COMPILED: LazyLock<Compiled> = LazyLock::new(|| {
    let patterns = RULES.iter().map(|r| r.pattern);
    Compiled {
        any: RegexSet::new(patterns.clone()).expect("secret rules compile"),
        each: patterns
            .map(|p| Regex::new(p).expect("secret rule compiles"))
            .collect(),
    }
});

/// What kind of credential `content` seems to hold, if any.
pub fn looks_secret(content: &[u8]) -> Option<&'static str> {
    let compiled = &*COMPILED;
    if !compiled.any.is_match(content) {
        return None;
    }
    compiled
        .any
        .matches(content)
        .into_iter()
        .find(|&i| {
            compiled.each[i]
                .find_iter(content)
                .any(|m| (RULES[i].check)(m.as_bytes()))
        })
        .map(|i| RULES[i].what)
}

/// Looks for credentials in a stream of chunks (a whole file, or what was
/// appended to one after the last [`OVERLAP`] bytes already looked at).
#[derive(Default)]
pub struct Scanner {
    carry: Vec<u8>,
    found: Option<&'static str>,
}

impl Scanner {
    /// A scanner that starts after `tail`, the end of content already
    /// scanned: a credential split between it and what follows is seen.
    pub fn after(tail: &[u8]) -> Scanner {
        Scanner {
            carry: tail[tail.len().saturating_sub(OVERLAP)..].to_vec(),
            found: None,
        }
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        if self.found.is_some() || chunk.is_empty() {
            return;
        }
        // Whatever crosses the seam lies within OVERLAP bytes either side.
        let seam = chunk.len().min(OVERLAP);
        let had = self.carry.len();
        self.carry.extend_from_slice(&chunk[..seam]);
        self.found = looks_secret(&self.carry);
        if self.found.is_none() && seam < chunk.len() {
            self.found = looks_secret(chunk);
        }
        if seam == chunk.len() {
            let keep = (had + seam).saturating_sub(OVERLAP);
            self.carry.drain(..keep);
        } else {
            self.carry.clear();
            self.carry
                .extend_from_slice(&chunk[chunk.len() - OVERLAP..]);
        }
    }

    /// What was found so far, if anything.
    pub fn found(&self) -> Option<&'static str> {
        self.found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CASES: &[(&str, &str)] = &[
        (
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXkt\n",
            "a private key",
        ),
        ("key:\n-----BEGIN RSA PRIVATE KEY-----\n", "a private key"),
        ("-----BEGIN PRIVATE KEY-----", "a private key"),
        ("-----BEGIN PGP PRIVATE KEY BLOCK-----", "a private key"),
        (
            "PuTTY-User-Key-File-3: ssh-ed25519\nEncryption: none\n",
            "a PuTTY private key",
        ),
        (
            "users:\n- name: admin\n  user:\n    client-key-data: LS0tLS1CRUdJTiBSU0EgUFJJVkFURSBLRVktLS0tLQo=\n",
            "a Kubernetes client key",
        ),
        (
            "aws_access_key_id = AKIAIOSFODNN7EXAMPLE\n",
            "an AWS access key",
        ),
        (
            "[default]\naws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n",
            "an AWS secret key",
        ),
        (
            "export AWS_SECRET_ACCESS_KEY=\"wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\"",
            "an AWS secret key",
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
        (
            "HF_TOKEN=hf_AbCdEfGhIjKlMnOpQrStUvWxYz01234567",
            "a Hugging Face token",
        ),
        (
            "//registry.npmjs.org/:_authToken=npm_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789\n",
            "an npm token",
        ),
        (
            "//registry.example.com/:_authToken=6b2f4c1e-8a0d-4e5b-9c3f-1a2b3c4d5e6f\n",
            "an npm token",
        ),
        (
            "machine api.example.com\n  login me\n  password hunter2hunter2\n",
            "a .netrc password",
        ),
        (
            "Authorization: Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
            "a JSON Web Token",
        ),
        (
            "DATABASE_URL=postgres://app:s3cr3t-pass@db.internal:5432/app",
            "a database URL with a password",
        ),
        (
            "mongodb+srv://admin:Pa55word@cluster0.example.net/test",
            "a database URL with a password",
        ),
    ];

    #[test]
    fn credentials_are_recognised() {
        for (text, what) in CASES {
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
            "connect with postgres://app@db.internal/app (peer auth)",
            "set DATABASE_URL=postgres://app:${DB_PASSWORD}@db/app",
            "//registry.npmjs.org/:_authToken=${NPM_TOKEN}",
            "the machine in the lab has a login screen and a password prompt",
            "hf_hub_download is a function; so is eyJ alone",
            "aws_secret_access_key is read from the environment",
        ] {
            assert_eq!(looks_secret(text.as_bytes()), None, "{text:?}");
        }
    }

    /// Every credential is found wherever it falls in a long stream read
    /// in chunks of any size, including split across two chunks.
    #[test]
    fn streams_are_scanned_whole_and_across_seams() {
        let filler = "lorem ipsum dolor sit amet\n".repeat(100);
        for (text, what) in CASES {
            let content = format!("{filler}{text}\n{filler}");
            let start = filler.len();
            for cut in [5, 7, start - 3, start + 2, start + text.len() / 2, 4096] {
                let mut s = Scanner::default();
                for chunk in content.as_bytes().chunks(cut) {
                    s.feed(chunk);
                }
                assert_eq!(s.found(), Some(*what), "{text:?} in chunks of {cut}");
            }
            // Appended after content already scanned clean.
            let (old, new) = content.as_bytes().split_at(start + text.len() / 2);
            let mut clean = Scanner::default();
            clean.feed(&old[..start]);
            assert_eq!(clean.found(), None);
            let mut s = Scanner::after(old);
            s.feed(new);
            assert_eq!(s.found(), Some(*what), "{text:?} split across appends");
        }
    }
}
