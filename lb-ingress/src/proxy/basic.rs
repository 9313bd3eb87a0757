//! HTTP basic authentication (ingress-nginx's `auth-type: basic`, nginx's `auth_basic`
//! with `auth_basic_user_file`): the users and password hashes of an htpasswd file, kept
//! in a Secret under the key `auth`.
//!
//! Hash formats, as nginx reads them: `$apr1$` (Apache's MD5, what `htpasswd` writes by
//! default), `$1$` (MD5-crypt), `$2a$`/`$2b$`/`$2y$` (bcrypt, `htpasswd -B`), `$5$` and
//! `$6$` (SHA-crypt), `{SHA}`, `{SSHA}` and `{PLAIN}`. A line in another format
//! (traditional DES crypt) is reported and its user cannot sign in.
//!
//! The slow formats (all but the last three) are verified on tokio's blocking threads, at
//! most one per CPU at a time, so that a client guessing passwords cannot stall a serving
//! thread; a credential that passed is remembered (by its SHA-256, never in clear) until
//! the next configuration swap, so a signed-in client pays the hash once.
//!
//! MD5-crypt is written out here (about 40 lines over the `md-5` crate): no maintained
//! crate implements it; the ones that do (`pwhash`, `htpasswd-verify`) are unmaintained
//! or pull in `rust-crypto`.
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};

use base64::Engine as _;
use hyper::header::HeaderValue;
use md5::{Digest as _, Md5};
use sha1::Sha1;
use sha2::Sha256;
use subtle::ConstantTimeEq as _;
use tokio::sync::Semaphore;

/// A password hash from an htpasswd line.
#[derive(Clone, Debug)]
enum Stored {
    /// `$apr1$` or `$1$`: the magic, the salt and the whole line's hash.
    Md5Crypt {
        magic: &'static str,
        salt: String,
        hash: String,
    },
    Bcrypt(String),
    Sha256Crypt(String),
    Sha512Crypt(String),
    Sha1([u8; 20]),
    Ssha {
        digest: [u8; 20],
        salt: Vec<u8>,
    },
    Plain(String),
}

impl Stored {
    fn parse(hash: &str) -> Result<Stored, &'static str> {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.decode(s);
        if let Some(rest) = hash.strip_prefix("{PLAIN}") {
            return Ok(Stored::Plain(rest.to_owned()));
        }
        if let Some(rest) = hash.strip_prefix("{SHA}") {
            let bytes = b64(rest).map_err(|_| "{SHA} is not base64")?;
            return <[u8; 20]>::try_from(bytes.as_slice())
                .map(Stored::Sha1)
                .map_err(|_| "{SHA} is not a SHA-1 digest");
        }
        if let Some(rest) = hash.strip_prefix("{SSHA}") {
            let bytes = b64(rest).map_err(|_| "{SSHA} is not base64")?;
            if bytes.len() <= 20 {
                return Err("{SSHA} has no salt");
            }
            let (digest, salt) = bytes.split_at(20);
            return Ok(Stored::Ssha {
                digest: digest.try_into().map_err(|_| "{SSHA} is too short")?,
                salt: salt.to_vec(),
            });
        }
        for magic in ["$apr1$", "$1$"] {
            if let Some(rest) = hash.strip_prefix(magic) {
                let Some((salt, _)) = rest.split_once('$') else {
                    return Err("an MD5-crypt hash without its salt");
                };
                return Ok(Stored::Md5Crypt {
                    magic: if magic == "$1$" { "$1$" } else { "$apr1$" },
                    salt: salt.chars().take(8).collect(),
                    hash: hash.to_owned(),
                });
            }
        }
        if ["$2a$", "$2b$", "$2y$", "$2x$"]
            .iter()
            .any(|p| hash.starts_with(p))
        {
            return Ok(Stored::Bcrypt(hash.to_owned()));
        }
        if hash.starts_with("$5$") {
            return Ok(Stored::Sha256Crypt(hash.to_owned()));
        }
        if hash.starts_with("$6$") {
            return Ok(Stored::Sha512Crypt(hash.to_owned()));
        }
        Err("not a supported hash ($apr1$, $1$, bcrypt, $5$, $6$, {SHA}, {SSHA}, {PLAIN})")
    }

    /// Cheap enough to check on a serving thread.
    fn is_fast(&self) -> bool {
        matches!(
            self,
            Stored::Sha1(_) | Stored::Ssha { .. } | Stored::Plain(_)
        )
    }

    fn verify(&self, password: &[u8]) -> bool {
        match self {
            Stored::Plain(p) => p.as_bytes().ct_eq(password).into(),
            Stored::Sha1(digest) => Sha1::digest(password).as_slice().ct_eq(digest).into(),
            Stored::Ssha { digest, salt } => {
                let mut h = Sha1::new();
                h.update(password);
                h.update(salt);
                h.finalize().as_slice().ct_eq(digest).into()
            }
            Stored::Md5Crypt { magic, salt, hash } => md5_crypt(password, salt.as_bytes(), magic)
                .as_bytes()
                .ct_eq(hash.as_bytes())
                .into(),
            Stored::Bcrypt(hash) => bcrypt::verify(password, hash).unwrap_or(false),
            Stored::Sha256Crypt(hash) => std::str::from_utf8(password)
                .is_ok_and(|p| sha_crypt::sha256_check(p, hash).is_ok()),
            Stored::Sha512Crypt(hash) => std::str::from_utf8(password)
                .is_ok_and(|p| sha_crypt::sha512_check(p, hash).is_ok()),
        }
    }
}

/// MD5-crypt (Poul-Henning Kamp's, `$1$`) and Apache's variant (`$apr1$`, the same with
/// another magic): the whole hash string for `password` with `salt` (at most 8 bytes).
fn md5_crypt(password: &[u8], salt: &[u8], magic: &str) -> String {
    const ITOA64: &[u8; 64] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let alternate = Md5::new()
        .chain_update(password)
        .chain_update(salt)
        .chain_update(password)
        .finalize();
    let mut ctx = Md5::new()
        .chain_update(password)
        .chain_update(magic.as_bytes())
        .chain_update(salt);
    for chunk in password.chunks(16) {
        ctx.update(&alternate[..chunk.len()]);
    }
    let mut i = password.len();
    while i > 0 {
        if i & 1 == 1 {
            ctx.update([0u8]);
        } else {
            ctx.update(&password[..1]);
        }
        i >>= 1;
    }
    let mut digest = ctx.finalize();
    for round in 0..1000 {
        let mut c = Md5::new();
        if round & 1 == 1 {
            c.update(password);
        } else {
            c.update(digest);
        }
        if round % 3 != 0 {
            c.update(salt);
        }
        if round % 7 != 0 {
            c.update(password);
        }
        if round & 1 == 1 {
            c.update(digest);
        } else {
            c.update(password);
        }
        digest = c.finalize();
    }
    let mut out = String::with_capacity(magic.len() + salt.len() + 23);
    out.push_str(magic);
    out.push_str(&String::from_utf8_lossy(salt));
    out.push('$');
    let mut put = |v: u32, n: usize| {
        let mut v = v;
        for _ in 0..n {
            out.push(char::from(ITOA64[(v & 0x3f) as usize]));
            v >>= 6;
        }
    };
    let d = |i: usize| u32::from(digest[i]);
    for (a, b, c) in [(0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5)] {
        put((d(a) << 16) | (d(b) << 8) | d(c), 4);
    }
    put(d(11), 2);
    out
}

/// Credentials remembered as verified, at most (then forgotten all at once).
const REMEMBERED: usize = 4096;

/// Slow verifications running at once, at most: one per CPU.
fn verifiers() -> &'static Semaphore {
    static VERIFIERS: OnceLock<Semaphore> = OnceLock::new();
    VERIFIERS
        .get_or_init(|| Semaphore::new(std::thread::available_parallelism().map_or(1, usize::from)))
}

/// The users of one htpasswd file, and the realm they are asked for.
#[derive(Debug)]
pub struct BasicAuth {
    realm: String,
    users: HashMap<String, Stored>,
    /// SHA-256 of `Authorization` values that passed.
    verified: Mutex<HashSet<[u8; 32]>>,
}

impl BasicAuth {
    /// The users of an htpasswd file (`user:hash` per line; blank lines and `#` comments
    /// skipped), and one problem per line that cannot be used.
    pub fn from_htpasswd(text: &str, realm: &str) -> (BasicAuth, Vec<String>) {
        let mut entries = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((user, hash)) = line.split_once(':') else {
                entries.push(Err(format!("line {}: not user:hash", n + 1)));
                continue;
            };
            // Apache's digest files have user:realm:hash; nginx reads up to the next ':'.
            let hash = hash.split(':').next().unwrap_or_default();
            entries.push(Ok((format!("line {} (user {user:?})", n + 1), user, hash)));
        }
        Self::from_entries(entries, realm)
    }

    /// The users of an `auth-map` Secret: each key a user, its value the hash.
    pub fn from_map<'a>(
        map: impl IntoIterator<Item = (&'a str, &'a str)>,
        realm: &str,
    ) -> (BasicAuth, Vec<String>) {
        let entries = map
            .into_iter()
            .map(|(user, hash)| Ok((format!("user {user:?}"), user, hash.trim())))
            .collect();
        Self::from_entries(entries, realm)
    }

    /// (where, user, hash) entries, or what is wrong with one; one problem per entry
    /// that cannot be used, in order.
    fn from_entries(
        entries: Vec<Result<(String, &str, &str), String>>,
        realm: &str,
    ) -> (BasicAuth, Vec<String>) {
        let mut users = HashMap::new();
        let mut problems = Vec::new();
        for entry in entries {
            let (place, user, hash) = match entry {
                Ok(e) => e,
                Err(problem) => {
                    problems.push(problem);
                    continue;
                }
            };
            match Stored::parse(hash) {
                Ok(stored) => {
                    users.insert(user.to_owned(), stored);
                }
                Err(why) => problems.push(format!("{place}: {why}")),
            }
        }
        let auth = BasicAuth {
            realm: realm.to_owned(),
            users,
            verified: Mutex::new(HashSet::new()),
        };
        (auth, problems)
    }

    pub fn users(&self) -> usize {
        self.users.len()
    }

    /// The `WWW-Authenticate` value a 401 carries.
    pub fn challenge(&self) -> HeaderValue {
        let realm: String = (self.realm.chars())
            .filter(|c| !c.is_control() && *c != '"' && *c != '\\')
            .collect();
        HeaderValue::try_from(format!("Basic realm=\"{realm}\""))
            .unwrap_or_else(|_| HeaderValue::from_static("Basic"))
    }

    /// Does `authorization` (the request's header) name a user of the file with the
    /// right password?
    pub async fn check(self: &Arc<Self>, authorization: Option<&HeaderValue>) -> bool {
        let Some(value) = authorization else {
            return false;
        };
        let Some((user, password)) = credentials(value.as_bytes()) else {
            return false;
        };
        let Some(stored) = self.users.get(&user) else {
            return false;
        };
        let key: [u8; 32] = Sha256::digest(value.as_bytes()).into();
        if self.remembered().contains(&key) {
            return true;
        }
        let ok = if stored.is_fast() {
            stored.verify(&password)
        } else {
            let Ok(_permit) = verifiers().acquire().await else {
                return false;
            };
            let stored = stored.clone();
            tokio::task::spawn_blocking(move || stored.verify(&password))
                .await
                .unwrap_or(false)
        };
        if ok {
            let mut remembered = self.remembered();
            if remembered.len() >= REMEMBERED {
                remembered.clear();
            }
            remembered.insert(key);
        }
        ok
    }

    fn remembered(&self) -> std::sync::MutexGuard<'_, HashSet<[u8; 32]>> {
        self.verified
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The user of a `Basic` `Authorization` value (nginx's `$remote_user`).
pub fn user(value: &HeaderValue) -> Option<String> {
    credentials(value.as_bytes()).map(|(user, _)| user)
}

/// User and password of a `Basic` `Authorization` value.
fn credentials(value: &[u8]) -> Option<(String, Vec<u8>)> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    let user = String::from_utf8(decoded[..colon].to_vec()).ok()?;
    Some((user, decoded[colon + 1..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Made with `openssl passwd` (apr1, 1, 5, 6), Python's hashlib ({SHA}, {SSHA})
    /// and Python's bcrypt (a `$2y$` line as `htpasswd -B` writes it).
    const HTPASSWD: &str = "\
# users
apr:$apr1$Zx8PqL2a$76aYfI91l4FjYZ.6m3AFl0
md5:$1$abcdefgh$oQj35cyv.Q8dkIXyNJ01A0
sha256:$5$saltsalt$KaFE.yDcIi/zeoPRM3/F6T5QnQux8TSO7PEScTtO9/8
sha512:$6$saltsalt$W8PuyB4HsjS2e/4CJL.xRgwlPl05mz2snWqIZE8aGa93xCsJ4Vcvw.12sYoWNmV248O8A5XF.0oI9P5zhxNGd0
sha1:{SHA}F/WZ9PxtuIpP2yyadrWdU4eK0og=
ssha:{SSHA}fJIHKliRMz7Dj6PFkVkKlPHEy59OYUNs
bcrypt:$2y$05$1OySy3v3hiUUxumhXe/bA.Hxp0C4GQGIsOP.AH0r.JkdsrxEpbjjK
plain:{PLAIN}plain-secret

des:abJnggxhB/yWI
broken
";

    fn basic(user: &str, password: &str) -> HeaderValue {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        HeaderValue::try_from(format!("Basic {token}")).unwrap()
    }

    #[test]
    fn md5_crypt_matches_openssl() {
        assert_eq!(
            md5_crypt(b"apr-secret", b"Zx8PqL2a", "$apr1$"),
            "$apr1$Zx8PqL2a$76aYfI91l4FjYZ.6m3AFl0"
        );
        assert_eq!(
            md5_crypt(b"md5-secret", b"abcdefgh", "$1$"),
            "$1$abcdefgh$oQj35cyv.Q8dkIXyNJ01A0"
        );
    }

    #[tokio::test]
    async fn every_format_nginx_reads_verifies() {
        let (auth, problems) = BasicAuth::from_htpasswd(HTPASSWD, "Staff");
        let auth = Arc::new(auth);
        assert_eq!(auth.users(), 8);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].contains("line 11 (user \"des\")"),
            "{problems:?}"
        );
        assert!(
            problems[1].contains("line 12: not user:hash"),
            "{problems:?}"
        );
        for user in [
            "apr", "md5", "sha256", "sha512", "sha1", "ssha", "bcrypt", "plain",
        ] {
            let right = basic(user, &format!("{user}-secret"));
            assert!(auth.check(Some(&right)).await, "{user}");
            // Remembered: passes again without the hash.
            assert!(
                auth.remembered()
                    .contains(&<[u8; 32]>::from(Sha256::digest(right.as_bytes())))
            );
            assert!(auth.check(Some(&right)).await, "{user} again");
            assert!(
                !auth.check(Some(&basic(user, "wrong"))).await,
                "{user} wrong"
            );
            assert!(!auth.check(Some(&basic(user, ""))).await, "{user} empty");
        }
        // Another user's password, an unknown user, the DES line, other schemes, junk.
        assert!(!auth.check(Some(&basic("apr", "md5-secret"))).await);
        assert!(!auth.check(Some(&basic("nobody", "x"))).await);
        assert!(!auth.check(Some(&basic("des", "x"))).await);
        assert!(!auth.check(None).await);
        for junk in ["Bearer abc", "Basic !!!", "Basic", "Basic dXNlcg=="] {
            let v = HeaderValue::from_static(junk);
            assert!(!auth.check(Some(&v)).await, "{junk}");
        }
        // The scheme is case-insensitive.
        let lower = basic("plain", "plain-secret")
            .to_str()
            .unwrap()
            .replace("Basic", "basic");
        assert!(
            auth.check(Some(&HeaderValue::try_from(lower).unwrap()))
                .await
        );
    }

    #[test]
    fn the_challenge_names_the_realm() {
        let (auth, _) = BasicAuth::from_htpasswd("", "Staff \"only\"");
        assert_eq!(auth.challenge(), "Basic realm=\"Staff only\"");
    }
}
