//! Who sent a request: the client's address (the socket's, or from
//! `X-Forwarded-For` only when the socket is a trusted proxy), optionally
//! anonymised; the user agent; the visitor cookie. These become the server-side
//! fields of every event.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use axum::http::{HeaderMap, HeaderValue, header};
use ipnet::IpNet;
use serde_json::{Map, Value};

/// Field names of the server-side fields.
pub const RECEIVED_AT: &str = "received_at_ms";
/// The client's address.
pub const CLIENT_IP: &str = "client_ip";
/// The `User-Agent` header.
pub const USER_AGENT: &str = "user_agent";
/// The visitor cookie's id.
pub const VISITOR_ID: &str = "visitor_id";

/// Longest user agent kept, bytes (longer ones are cut at a character boundary).
const MAX_USER_AGENT: usize = 1024;

/// How client addresses and visitor cookies are read.
#[derive(Debug, Clone, Default)]
pub struct ClientRules {
    trusted: Vec<IpNet>,
    anonymize: bool,
    cookie: Option<String>,
    cross_site: bool,
}

/// What is known of a request's sender.
#[derive(Debug, Clone)]
pub struct Client {
    /// The client's address (anonymised when configured).
    pub ip: IpAddr,
    /// The `User-Agent` header, if any.
    pub user_agent: Option<String>,
    /// The visitor id: from the cookie, or new.
    pub visitor: Option<Visitor>,
    /// When the request arrived, ms since the epoch.
    pub received_ms: i64,
}

/// A visitor id and whether the answer must set the cookie.
#[derive(Debug, Clone)]
pub struct Visitor {
    /// 16 hex digits.
    pub id: String,
    /// The request had no valid cookie: the answer sets one.
    pub set_cookie: Option<HeaderValue>,
}

/// Stream and cookie names: 1-64 letters, digits, `.`, `_`, `-`.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// `10.0.0.0/8`, `::1/128`, or a bare address (a network of one).
pub fn parse_network(text: &str) -> Option<IpNet> {
    let text = text.trim();
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from))
}

impl ClientRules {
    /// Rules from the `[collect]` section (already checked by `problems`).
    pub fn new(config: &super::CollectConfig) -> Self {
        Self {
            trusted: config
                .trusted_proxies
                .iter()
                .filter_map(|p| parse_network(p))
                .collect(),
            anonymize: config.anonymize_ip,
            cookie: config.visitor_cookie.clone(),
            cross_site: config.visitor_cookie_cross_site,
        }
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// The client's address: the peer's, unless the peer is a trusted proxy;
    /// then the right-most `X-Forwarded-For` entry that is not itself a trusted
    /// proxy (entries left of it were written by the client and prove nothing).
    pub fn address(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        let mut client = canonical(peer.ip());
        if self.trusts(client) {
            let hops: Vec<&str> = headers
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(str::trim)
                .collect();
            for hop in hops.iter().rev() {
                match hop.parse::<IpAddr>() {
                    Ok(ip) => {
                        client = canonical(ip);
                        if !self.trusts(client) {
                            break;
                        }
                    }
                    // Garbage from a client: stop at the last address a proxy wrote.
                    Err(_) => break,
                }
            }
        }
        if self.anonymize {
            anonymize(client)
        } else {
            client
        }
    }

    /// What the request tells of its sender; `tracking` requests also get the
    /// visitor cookie when one is configured.
    pub fn client(&self, peer: SocketAddr, headers: &HeaderMap, tracking: bool) -> Client {
        let user_agent = headers
            .get(header::USER_AGENT)
            .map(|v| cut(&String::from_utf8_lossy(v.as_bytes()), MAX_USER_AGENT));
        let visitor = match (&self.cookie, tracking) {
            (Some(name), true) => Some(self.visitor(name, headers)),
            _ => None,
        };
        Client {
            ip: self.address(peer, headers),
            user_agent,
            visitor,
            received_ms: chrono::Utc::now().timestamp_millis(),
        }
    }

    fn visitor(&self, name: &str, headers: &HeaderMap) -> Visitor {
        let found = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(k, v)| *k == name && valid_visitor_id(v))
            .map(|(_, v)| v.to_owned());
        match found {
            Some(id) => Visitor {
                id,
                set_cookie: None,
            },
            None => {
                let id = new_visitor_id();
                let same_site = if self.cross_site {
                    "SameSite=None; Secure"
                } else {
                    "SameSite=Lax"
                };
                // 13 months, the longest consent-era guidance allows.
                let cookie =
                    format!("{name}={id}; Path=/; Max-Age=33696000; HttpOnly; {same_site}");
                Visitor {
                    id,
                    set_cookie: HeaderValue::from_str(&cookie).ok(),
                }
            }
        }
    }
}

impl Client {
    /// Writes the server-side fields into `event`. `overwrite`: the server's
    /// values replace any the sender put there (every sender but a trusted one).
    pub fn stamp(&self, event: &mut Map<String, Value>, overwrite: bool) {
        let mut set = |name: &str, value: Value| {
            if overwrite || !event.contains_key(name) {
                event.insert(name.to_owned(), value);
            }
        };
        set(RECEIVED_AT, Value::from(self.received_ms));
        set(CLIENT_IP, Value::from(self.ip.to_string()));
        if let Some(agent) = &self.user_agent {
            set(USER_AGENT, Value::from(agent.clone()));
        }
        if let Some(visitor) = &self.visitor {
            set(VISITOR_ID, Value::from(visitor.id.clone()));
        }
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// IPv4: the last octet zeroed; IPv6: the last 80 bits zeroed.
pub fn anonymize(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            IpAddr::V4(Ipv4Addr::new(a, b, c, 0))
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 80) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
    }
}

fn valid_visitor_id(id: &str) -> bool {
    id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// 16 hex digits from the system's random source (Matomo's visitor id shape).
fn new_visitor_id() -> String {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        // No entropy source: a time-based id still tells visitors apart.
        bytes = (chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0) as u64).to_be_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `text` cut to at most `max` bytes at a character boundary.
pub fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(trusted: &[&str]) -> ClientRules {
        ClientRules {
            trusted: trusted.iter().filter_map(|t| parse_network(t)).collect(),
            ..ClientRules::default()
        }
    }

    fn xff(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", value.parse().unwrap());
        headers
    }

    #[test]
    fn forwarded_for_is_believed_only_from_a_trusted_peer() {
        let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let stranger: SocketAddr = "192.0.2.7:5000".parse().unwrap();
        let rules = rules(&["127.0.0.1/32", "10.0.0.0/8"]);
        assert_eq!(
            rules.address(peer, &xff("198.51.100.4")).to_string(),
            "198.51.100.4"
        );
        assert_eq!(
            rules.address(stranger, &xff("198.51.100.4")).to_string(),
            "192.0.2.7",
            "a direct client cannot name its own address"
        );
        // The client wrote the left entry; the trusted proxies appended the rest.
        assert_eq!(
            rules
                .address(peer, &xff("6.6.6.6, 198.51.100.4, 10.1.2.3"))
                .to_string(),
            "198.51.100.4"
        );
        assert_eq!(
            rules.address(peer, &xff("6.6.6.6, not-an-ip")).to_string(),
            "127.0.0.1",
            "garbage stops at the proxy"
        );
        assert_eq!(
            rules.address(peer, &HeaderMap::new()).to_string(),
            "127.0.0.1"
        );
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:1".parse().unwrap();
        assert_eq!(
            rules.address(mapped, &xff("203.0.113.9")).to_string(),
            "203.0.113.9"
        );
    }

    #[test]
    fn anonymised_addresses_lose_their_host_part() {
        assert_eq!(
            anonymize("198.51.100.77".parse().unwrap()).to_string(),
            "198.51.100.0"
        );
        assert_eq!(
            anonymize("2001:db8:85a3:1234:5678:8a2e:370:7334".parse().unwrap()).to_string(),
            "2001:db8:85a3::"
        );
    }

    #[test]
    fn the_visitor_cookie_is_kept_or_made() {
        let rules = ClientRules {
            cookie: Some("vid".into()),
            ..ClientRules::default()
        };
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let fresh = rules.client(peer, &HeaderMap::new(), true);
        let visitor = fresh.visitor.expect("a visitor");
        assert!(valid_visitor_id(&visitor.id));
        let cookie = visitor.set_cookie.expect("a new cookie");
        assert!(
            cookie
                .to_str()
                .unwrap()
                .starts_with(&format!("vid={}", visitor.id))
        );

        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            "a=1; vid=0123456789abcdef; b=2".parse().unwrap(),
        );
        let known = rules.client(peer, &headers, true).visitor.unwrap();
        assert_eq!(known.id, "0123456789abcdef");
        assert!(known.set_cookie.is_none());

        headers.insert(header::COOKIE, "vid=<script>".parse().unwrap());
        let forged = rules.client(peer, &headers, true).visitor.unwrap();
        assert_ne!(forged.id, "<script>", "a malformed id is replaced");
        assert!(rules.client(peer, &headers, false).visitor.is_none());
    }
}
