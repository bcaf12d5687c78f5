//! The issuer's users: a YAML file (`--users`) or, without one, alice/alice and bob/bob.
//!
//! ```yaml
//! users:
//!   - username: alice
//!     password: alice
//!   - username: carol
//!     password: carol
//!     audience: age          # the token's `aud` (default: the client_id of the request)
//!     scope: openid email    # the token's `scope` (default: "openid profile")
//! ```
//!
//! Passwords are plain text: this is a sample for the labs, not a user store. Errors name the
//! file, line and field, as the mesh configuration's do.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::config::source::Document;
use crate::config::ConfigError;

/// The scope of a token when the user has none configured.
pub const DEFAULT_SCOPE: &str = "openid profile";

/// Why the users file was refused (the message names file, line and field).
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error("cannot read the users file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(ConfigError),
}

/// One user who may ask for tokens with the password grant.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub username: String,
    pub password: String,
    /// The `aud` of this user's tokens; the request's `client_id` when absent.
    #[serde(default)]
    pub audience: Option<String>,
    /// The `scope` of this user's tokens; [`DEFAULT_SCOPE`] when absent.
    #[serde(default)]
    pub scope: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    users: Vec<User>,
}

/// The users the issuer knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Users {
    users: Vec<User>,
}

impl Default for Users {
    /// alice/alice and bob/bob, as the labs use them.
    fn default() -> Users {
        let user = |name: &str| User {
            username: name.into(),
            password: name.into(),
            audience: None,
            scope: None,
        };
        Users {
            users: vec![user("alice"), user("bob")],
        }
    }
}

impl Users {
    /// Reads and validates a users file.
    pub fn load(path: &Path) -> Result<Users, UsersError> {
        let text = std::fs::read_to_string(path).map_err(|source| UsersError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Users::parse(path, &text)
    }

    /// Parses the text of a users file (`path` names it in errors).
    pub fn parse(path: &Path, text: &str) -> Result<Users, UsersError> {
        let doc = Document {
            file: Arc::new(path.to_path_buf()),
            line_offset: 0,
            text: text.to_string(),
        };
        if let serde_yaml_ng::Value::Sequence(_) = doc.value().map_err(UsersError::Invalid)? {
            return Err(UsersError::Invalid(doc.error(
                "",
                "the list goes under a `users:` key (users: [{username, password}, ...])",
            )));
        }
        let file: UsersFile = doc.typed().map_err(UsersError::Invalid)?;
        if file.users.is_empty() {
            return Err(UsersError::Invalid(doc.error("users", "lists no user")));
        }
        for (i, user) in file.users.iter().enumerate() {
            let invalid = |field: &str, message: &str| {
                UsersError::Invalid(doc.error(&format!("users[{i}].{field}"), message))
            };
            if user.username.is_empty() {
                return Err(invalid("username", "must not be empty"));
            }
            if user.password.is_empty() {
                return Err(invalid("password", "must not be empty"));
            }
            if user.audience.as_deref() == Some("") {
                return Err(invalid(
                    "audience",
                    "must not be empty (leave it out for the client_id)",
                ));
            }
            if user.scope.as_deref().is_some_and(|s| s.trim().is_empty()) {
                return Err(invalid(
                    "scope",
                    "must not be empty (leave it out for \"openid profile\")",
                ));
            }
            if file.users[..i].iter().any(|u| u.username == user.username) {
                return Err(invalid(
                    "username",
                    &format!("{:?} is listed twice", user.username),
                ));
            }
        }
        Ok(Users { users: file.users })
    }

    /// The user with this name and password, if there is one.
    pub fn authenticate(&self, username: &str, password: &str) -> Option<&User> {
        self.users
            .iter()
            .find(|u| u.username == username && u.password == password)
    }

    /// The usernames, for the start-up log line.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.users.iter().map(|u| u.username.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Users, String> {
        Users::parse(Path::new("users.yaml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_alice_and_bob() {
        let users = Users::default();
        assert!(users.authenticate("alice", "alice").is_some());
        assert!(users.authenticate("bob", "bob").is_some());
        assert!(users.authenticate("alice", "bob").is_none());
        assert!(users.authenticate("carol", "carol").is_none());
    }

    #[test]
    fn a_file_with_audience_and_scope() {
        let users = parse(
            "users:
  - username: carol
    password: s3cret
    audience: age
    scope: openid email
  - { username: dave, password: d }
",
        )
        .unwrap();
        let carol = users.authenticate("carol", "s3cret").unwrap();
        assert_eq!(carol.audience.as_deref(), Some("age"));
        assert_eq!(carol.scope.as_deref(), Some("openid email"));
        assert_eq!(users.authenticate("dave", "d").unwrap().audience, None);
        assert!(
            users.authenticate("alice", "alice").is_none(),
            "no defaults with a file"
        );
    }

    #[test]
    fn errors_name_the_line_and_field() {
        let cases = [
            (
                "users:\n  - username: a\n    pasword: x\n",
                "users.yaml:3:5: users[0].pasword: unknown field \"pasword\", expected one of",
            ),
            (
                "users:\n  - username: a\n",
                "users.yaml:2:5: users[0].password: missing field \"password\"",
            ),
            ("users: []\n", "users.yaml:1:1: users: lists no user"),
            (
                "users:\n  - { username: a, password: x }\n  - username: b\n    password: \"\"\n",
                "users.yaml:4:5: users[1].password: must not be empty",
            ),
            (
                "users:\n  - { username: a, password: x }\n  - username: a\n    password: y\n",
                "users.yaml:3:5: users[1].username: \"a\" is listed twice",
            ),
            (
                "- username: a\n",
                "users.yaml:1:1: the list goes under a `users:` key",
            ),
            (
                "users: {}\n",
                "users.yaml:1:8: users: invalid type: map, expected a sequence",
            ),
            ("", "users.yaml:1:1: users: missing field \"users\""),
        ];
        for (text, want) in cases {
            let err = parse(text).unwrap_err();
            assert!(
                err.starts_with(want),
                "{text:?}:\n got  {err}\n want {want}"
            );
        }
    }
}
