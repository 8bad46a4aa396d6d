//! A small MaxMind DB (`.mmdb`, format 2.0) writer, so GeoIP tests build the database they
//! read instead of shipping a binary file or downloading GeoLite2.
//!
//! ```
//! use palisade_testkit::mmdb::MmdbWriter;
//!
//! let db = MmdbWriter::new("GeoLite2-Country")
//!     .country("81.2.69.0/24", "GB")
//!     .country("2a02:1810::/32", "DE")
//!     .write_temp();
//! assert!(db.path().exists());
//! ```
//!
//! The file layout, after the MaxMind DB specification
//! (<https://maxmind.github.io/MaxMind-DB/>):
//!
//! 1. **Search tree**: a binary trie over the address bits, `node_count` nodes of two records
//!    (left: bit 0, right: bit 1), each record `record_size` bits, big-endian. A record
//!    `< node_count` is another node, `== node_count` means "no data", `> node_count` points
//!    into the data section at `record - node_count - 16`.
//! 2. **Separator**: 16 zero bytes.
//! 3. **Data section**: the records' values, each a control byte (type in the top 3 bits, size
//!    in the low 5) then the payload; a map's size is its number of pairs.
//! 4. **Metadata**: `\xAB\xCD\xEFMaxMind.com`, then one map (node count, record size, IP
//!    version, database type, languages, format version, build time, description).
//!
//! The tree is always IPv6 (`ip_version` 6); IPv4 networks live at `::a.b.c.d/(96 + len)` where
//! readers look for them. Unlike MaxMind's own writer, `::ffff:0:0/96` (IPv4-mapped) is not
//! aliased to the IPv4 subtree: look up mapped addresses in their IPv4 form.

use std::{
    collections::HashMap,
    io,
    path::Path,
    time::{SystemTime, UNIX_EPOCH},
};

use ipnet::IpNet;

use crate::TempFile;

/// A value in the data section. Only the types GeoIP records and the metadata need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// UTF-8 string (type 2).
    String(String),
    /// Unsigned 16-bit integer (type 5).
    U16(u16),
    /// Unsigned 32-bit integer (type 6).
    U32(u32),
    /// Unsigned 64-bit integer (extended type 9).
    U64(u64),
    /// Boolean (extended type 14).
    Bool(bool),
    /// Map with string keys (type 7), in this order.
    Map(Vec<(String, Value)>),
    /// Array (extended type 11).
    Array(Vec<Value>),
}

impl Value {
    /// A map from `(key, value)` pairs.
    pub fn map<K: Into<String>>(pairs: impl IntoIterator<Item = (K, Value)>) -> Self {
        Self::Map(pairs.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    /// The GeoIP2/GeoLite2 Country shape: `{"country": {"iso_code": iso_code}}`.
    pub fn country(iso_code: &str) -> Self {
        Self::map([("country", Self::map([("iso_code", iso_code.into())]))])
    }

    /// A record with only `{"registered_country": {"iso_code": iso_code}}` (MaxMind's records
    /// for some anycast and satellite networks look like this).
    pub fn registered_country(iso_code: &str) -> Self {
        Self::map([(
            "registered_country",
            Self::map([("iso_code", iso_code.into())]),
        )])
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Self::String(s.to_owned())
    }
}

/// Builds a MaxMind DB file from networks and their records. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct MmdbWriter {
    database_type: String,
    record_size: u16,
    entries: Vec<(IpNet, Value)>,
}

impl MmdbWriter {
    /// An empty database of the given `database_type` (`"GeoLite2-Country"`), record size 24.
    pub fn new(database_type: &str) -> Self {
        Self {
            database_type: database_type.to_owned(),
            record_size: 24,
            entries: Vec::new(),
        }
    }

    /// The record size in bits: 24, 28 or 32. Panics otherwise.
    pub fn record_size(mut self, bits: u16) -> Self {
        assert!(matches!(bits, 24 | 28 | 32), "record size {bits}");
        self.record_size = bits;
        self
    }

    /// Maps `net` to `value`. A more specific network overrides a less specific one whatever
    /// the order; for the same network, the last insert wins.
    pub fn insert(mut self, net: IpNet, value: Value) -> Self {
        self.entries.push((net.trunc(), value));
        self
    }

    /// Maps `cidr` (`"81.2.69.0/24"`, `"2a02::/16"`) to a country record. Panics on a bad CIDR.
    pub fn country(self, cidr: &str, iso_code: &str) -> Self {
        let net = cidr.parse().unwrap_or_else(|e| panic!("{cidr:?}: {e}"));
        self.insert(net, Value::country(iso_code))
    }

    /// The file's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        // 1. The trie, with records as indexes into `records` (deduplicated values).
        let mut tree = Trie::default();
        let mut records: Vec<Vec<u8>> = Vec::new();
        let mut seen: HashMap<Vec<u8>, usize> = HashMap::new();
        let mut entries: Vec<(u128, u8, usize)> = Vec::with_capacity(self.entries.len());
        for (net, value) in &self.entries {
            let mut bytes = Vec::new();
            encode(value, &mut bytes);
            let index = *seen.entry(bytes.clone()).or_insert_with(|| {
                records.push(bytes);
                records.len() - 1
            });
            let (bits, len) = match net {
                IpNet::V4(n) => (u128::from(u32::from(n.network())), 96 + n.prefix_len()),
                IpNet::V6(n) => (u128::from(n.network()), n.prefix_len()),
            };
            entries.push((bits, len, index));
        }
        // Less specific first, so a more specific network splits it instead of being lost.
        entries.sort_by_key(|&(_, len, _)| len);
        for (bits, len, index) in entries {
            tree.insert(bits, len, Child::Data(index));
        }

        // 2. The data section: the records back to back, at known offsets.
        let mut data = Vec::new();
        let offsets: Vec<usize> = records
            .iter()
            .map(|r| {
                let at = data.len();
                data.extend_from_slice(r);
                at
            })
            .collect();

        // 3. The tree, resolved to numbers.
        let node_count = tree.nodes.len();
        let resolve = |c: Child| -> u64 {
            let v = match c {
                Child::Node(n) => n,
                Child::Empty => node_count,
                Child::Data(i) => node_count + 16 + offsets[i],
            };
            let v = v as u64;
            assert!(
                v < 1 << self.record_size,
                "database too large for the record size"
            );
            v
        };
        let mut out = Vec::with_capacity(node_count * 8 + 16 + data.len() + 256);
        for node in &tree.nodes {
            let (l, r) = (resolve(node[0]), resolve(node[1]));
            match self.record_size {
                24 => {
                    out.extend_from_slice(&l.to_be_bytes()[5..]);
                    out.extend_from_slice(&r.to_be_bytes()[5..]);
                }
                28 => {
                    // Low 24 bits of each record around a middle byte holding the left
                    // record's top nibble (high half) and the right record's (low half).
                    out.extend_from_slice(&l.to_be_bytes()[5..]);
                    out.push((((l >> 24) & 0xf) << 4) as u8 | ((r >> 24) & 0xf) as u8);
                    out.extend_from_slice(&r.to_be_bytes()[5..]);
                }
                _ => {
                    out.extend_from_slice(&l.to_be_bytes()[4..]);
                    out.extend_from_slice(&r.to_be_bytes()[4..]);
                }
            }
        }
        out.extend_from_slice(&[0; 16]);
        out.extend_from_slice(&data);

        // 4. The metadata.
        out.extend_from_slice(b"\xAB\xCD\xEFMaxMind.com");
        let build_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let metadata = Value::map([
            ("node_count", Value::U32(node_count as u32)),
            ("record_size", Value::U16(self.record_size)),
            ("ip_version", Value::U16(6)),
            ("database_type", self.database_type.as_str().into()),
            ("languages", Value::Array(vec!["en".into()])),
            ("binary_format_major_version", Value::U16(2)),
            ("binary_format_minor_version", Value::U16(0)),
            ("build_epoch", Value::U64(build_epoch)),
            (
                "description",
                Value::map([("en", "palisade-testkit generated database".into())]),
            ),
        ]);
        encode(&metadata, &mut out);
        out
    }

    /// Writes the file to `path`.
    pub fn write_to(&self, path: &Path) -> io::Result<()> {
        std::fs::write(path, self.to_bytes())
    }

    /// Writes the file to a fresh temporary path, removed when the [`TempFile`] drops.
    pub fn write_temp(&self) -> TempFile {
        let file = TempFile::new(".mmdb");
        self.write_to(file.path())
            .unwrap_or_else(|e| panic!("write {}: {e}", file.path().display()));
        file
    }
}

/// One record of a trie node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Child {
    Empty,
    Node(usize),
    /// An index into the deduplicated records.
    Data(usize),
}

/// The search tree while it is built; node 0 is the root (bit 0 of the address).
#[derive(Debug)]
struct Trie {
    nodes: Vec<[Child; 2]>,
}

impl Default for Trie {
    fn default() -> Self {
        Self {
            nodes: vec![[Child::Empty; 2]],
        }
    }
}

impl Trie {
    /// Sets the record for the first `len` bits of `bits` (a 128-bit address) to `value`.
    fn insert(&mut self, bits: u128, len: u8, value: Child) {
        if len == 0 {
            // `::/0`: both halves of the root.
            self.nodes[0] = [value; 2];
            return;
        }
        let mut node = 0;
        for depth in 0..len {
            let bit = ((bits >> (127 - depth)) & 1) as usize;
            if depth + 1 == len {
                self.nodes[node][bit] = value;
                return;
            }
            node = match self.nodes[node][bit] {
                Child::Node(next) => next,
                // Descend through a less specific network or an empty record: a new node
                // whose halves both keep what the record held.
                held => {
                    self.nodes.push([held; 2]);
                    let next = self.nodes.len() - 1;
                    self.nodes[node][bit] = Child::Node(next);
                    next
                }
            };
        }
    }
}

/// Appends `value` in the data-section encoding.
fn encode(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::String(s) => {
            header(2, s.len(), out);
            out.extend_from_slice(s.as_bytes());
        }
        Value::U16(n) => uint(5, u64::from(*n), out),
        Value::U32(n) => uint(6, u64::from(*n), out),
        Value::U64(n) => uint(9, *n, out),
        // A boolean's value is its size; there is no payload.
        Value::Bool(b) => header(14, usize::from(*b), out),
        Value::Map(pairs) => {
            header(7, pairs.len(), out);
            for (k, v) in pairs {
                encode(&Value::String(k.clone()), out);
                encode(v, out);
            }
        }
        Value::Array(items) => {
            header(11, items.len(), out);
            for v in items {
                encode(v, out);
            }
        }
    }
}

/// An unsigned integer: big-endian without leading zero bytes; the size is the byte count.
fn uint(type_num: u8, n: u64, out: &mut Vec<u8>) {
    let bytes = n.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    header(type_num, 8 - skip, out);
    out.extend_from_slice(&bytes[skip..]);
}

/// The control byte (type in the top 3 bits, size in the low 5), the extended-type byte for
/// types above 7, then the size's extra bytes: sizes from 29 on spill into 1 to 3 bytes.
fn header(type_num: u8, size: usize, out: &mut Vec<u8>) {
    let (size_bits, extra): (u8, Vec<u8>) = match size {
        0..29 => (size as u8, Vec::new()),
        29..285 => (29, vec![(size - 29) as u8]),
        285..65_821 => (30, ((size - 285) as u16).to_be_bytes().to_vec()),
        _ => {
            let rest = u32::try_from(size - 65_821).expect("value too large");
            assert!(rest < 1 << 24, "value too large");
            (31, rest.to_be_bytes()[1..].to_vec())
        }
    };
    if type_num <= 7 {
        out.push((type_num << 5) | size_bits);
    } else {
        out.push(size_bits);
        out.push(type_num - 7);
    }
    out.extend_from_slice(&extra);
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use maxminddb::Reader;
    use serde::Deserialize;

    use super::*;

    #[derive(Deserialize, Debug)]
    struct Iso<'a> {
        iso_code: Option<&'a str>,
    }

    #[derive(Deserialize, Debug)]
    struct Record<'a> {
        #[serde(borrow)]
        country: Option<Iso<'a>>,
        #[serde(borrow)]
        registered_country: Option<Iso<'a>>,
    }

    fn sample(record_size: u16) -> Reader<Vec<u8>> {
        let bytes = MmdbWriter::new("GeoLite2-Country")
            .record_size(record_size)
            .country("81.0.0.0/8", "GB")
            .country("81.2.69.0/24", "SE") // more specific, inside the /8
            .country("2a02:1810::/32", "DE")
            .country("1.1.1.1/32", "AU")
            .insert(
                "9.9.9.0/24".parse().unwrap(),
                Value::registered_country("US"),
            )
            .insert(
                "8.8.8.0/24".parse().unwrap(),
                Value::map([("continent", Value::map([("code", "NA".into())]))]),
            )
            .to_bytes();
        Reader::from_source(bytes).expect("a valid database")
    }

    fn country(reader: &Reader<Vec<u8>>, ip: &str) -> Option<String> {
        let ip: IpAddr = ip.parse().unwrap();
        let record: Record<'_> = reader.lookup(ip).unwrap().decode().unwrap()?;
        let code = record
            .country
            .and_then(|c| c.iso_code)
            .or(record.registered_country.and_then(|c| c.iso_code))
            .unwrap_or("-");
        Some(code.to_owned())
    }

    #[test]
    fn the_real_reader_finds_ipv4_and_ipv6_networks_at_every_record_size() {
        for size in [24, 28, 32] {
            let r = sample(size);
            assert_eq!(r.metadata().record_size, size);
            assert_eq!(r.metadata().ip_version, 6);
            assert_eq!(r.metadata().database_type, "GeoLite2-Country");
            r.verify()
                .unwrap_or_else(|e| panic!("record size {size}: {e}"));
            assert_eq!(country(&r, "81.1.2.3").as_deref(), Some("GB"));
            assert_eq!(country(&r, "81.2.69.160").as_deref(), Some("SE"));
            assert_eq!(country(&r, "81.2.70.1").as_deref(), Some("GB"));
            assert_eq!(country(&r, "1.1.1.1").as_deref(), Some("AU"));
            assert_eq!(country(&r, "2a02:1810:1::1").as_deref(), Some("DE"));
            assert_eq!(country(&r, "9.9.9.9").as_deref(), Some("US"));
            assert_eq!(country(&r, "8.8.8.8").as_deref(), Some("-"));
            // Not covered: no record at all.
            assert_eq!(country(&r, "1.1.1.2"), None);
            assert_eq!(country(&r, "127.0.0.1"), None);
            assert_eq!(country(&r, "2a03::1"), None);
            assert_eq!(country(&r, "::1"), None);
        }
    }

    #[test]
    fn the_network_found_is_the_one_inserted() {
        let r = sample(24);
        let net = r.lookup("81.2.69.7".parse().unwrap()).unwrap().network();
        assert_eq!(net.unwrap().to_string(), "81.2.69.0/24");
        let net = r.lookup("2a02:1810::9".parse().unwrap()).unwrap().network();
        assert_eq!(net.unwrap().to_string(), "2a02:1810::/32");
    }

    #[test]
    fn an_empty_database_and_a_catch_all_network_are_valid() {
        let empty = Reader::from_source(MmdbWriter::new("Test").to_bytes()).unwrap();
        assert_eq!(country(&empty, "81.1.2.3"), None);
        let all = MmdbWriter::new("Test").insert("::/0".parse().unwrap(), Value::country("NZ"));
        let all = Reader::from_source(all.to_bytes()).unwrap();
        assert_eq!(country(&all, "81.1.2.3").as_deref(), Some("NZ"));
        assert_eq!(country(&all, "2001:db8::1").as_deref(), Some("NZ"));
    }

    #[test]
    fn long_strings_use_the_extended_size_forms() {
        for len in [28, 29, 284, 285, 65_820, 65_821, 70_000] {
            let db = MmdbWriter::new("Test").insert(
                "10.0.0.0/8".parse().unwrap(),
                Value::map([("name", Value::String("x".repeat(len)))]),
            );
            let r = Reader::from_source(db.to_bytes()).unwrap();
            #[derive(Deserialize)]
            struct Named {
                name: String,
            }
            let got: Named = r
                .lookup("10.1.1.1".parse().unwrap())
                .unwrap()
                .decode()
                .unwrap()
                .unwrap();
            assert_eq!(got.name.len(), len);
        }
    }
}
