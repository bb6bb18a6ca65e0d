//! The file as TOML: which sections it may have, how a section's raw form is picked out of it,
//! and where in the text an error is (`:line:column: dotted.key`).
//!
//! Nothing here judges a value; that is [`super::sections`], [`super::values`] and each
//! daemon's `validate`. What this module adds is that every parse error points at the key an
//! operator has to fix, even for a typo in a section name or a wrong type deep in an array of
//! tables.

use std::fmt;
use std::marker::PhantomData;
use std::path::Path;

use serde::Deserializer;
use serde::de::{self, DeserializeOwned, DeserializeSeed, IgnoredAny, MapAccess, Visitor};

use super::{
    ConfigError, DAEMON_SECTIONS, KNOWN_SECTIONS, Location, RawLogConfig, RawMetricsConfig,
    RawNatsConfig, RawStoreConfig,
};

/// The whole file as written: shared sections typed, the daemon's own section typed (as `R`),
/// other daemons' sections skipped.
#[derive(Debug)]
pub(super) struct RawFile<R> {
    pub(super) store: RawStoreConfig,
    pub(super) nats: RawNatsConfig,
    pub(super) log: RawLogConfig,
    pub(super) metrics: RawMetricsConfig,
    pub(super) daemon: R,
}

/// Parse `text` into its raw sections, `section` being the daemon's own (raw form `R`).
/// `path` is only used in messages.
pub(super) fn parse_raw<R: DeserializeOwned + Default>(
    path: &Path,
    text: &str,
    section: &'static str,
) -> Result<RawFile<R>, ConfigError> {
    check_sections(path, text, section)?;
    let seed = FileSeed::<R> {
        section,
        raw: PhantomData,
    };
    toml::Deserializer::parse(text)
        .and_then(|deserializer| seed.deserialize(deserializer))
        .map_err(|error| parse_error(path, text, &error))
}

/// The keys a section's raw struct accepts, exactly as its `#[derive(Deserialize)]` lists them,
/// or `None` when `R` is not a plain struct (a map, or a struct using `#[serde(flatten)]`).
///
/// Why it exists: the shipped example file must mention every key of every section, and a list
/// written by hand next to each `Raw…` struct is one more thing to forget when a key is added.
/// Asking serde instead means the struct *is* the list. It never reads a file or a value: it
/// hands `R` a deserializer that notes the field names serde offers and stops.
pub fn accepted_keys<R: DeserializeOwned>() -> Option<&'static [&'static str]> {
    let mut fields = None;
    // Always an error: the probe stops deserialisation once it has the names.
    let _stopped: Result<R, de::value::Error> = R::deserialize(FieldsProbe {
        fields: &mut fields,
    });
    fields
}

/// A deserializer that answers every request with an error, after noting the field list of a
/// struct request.
struct FieldsProbe<'a> {
    fields: &'a mut Option<&'static [&'static str]>,
}

impl<'de> Deserializer<'de> for FieldsProbe<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("not a struct"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.fields = Some(fields);
        Err(de::Error::custom("field names noted"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

/// Refuse unknown top-level keys up front, pointing at the key itself (serde would only know
/// the position of the whole document).
fn check_sections(path: &Path, text: &str, own: &str) -> Result<(), ConfigError> {
    let root = toml::de::DeTable::parse(text).map_err(|error| parse_error(path, text, &error))?;
    for key in root.get_ref().keys() {
        let name = key.get_ref();
        if name == own || KNOWN_SECTIONS.contains(&name.as_ref()) {
            continue;
        }
        let mut known: Vec<&str> = KNOWN_SECTIONS.to_vec();
        if !known.contains(&own) {
            known.push(own);
        }
        return Err(ConfigError::Parse {
            path: path.to_owned(),
            location: Location {
                line_column: Some(line_column(text, key.span().start)),
                key: Some(name.to_string()),
            },
            message: format!("unknown section, expected one of: {}", known.join(", ")),
        });
    }
    Ok(())
}

fn parse_error(path: &Path, text: &str, error: &toml::de::Error) -> ConfigError {
    let location = match error.span() {
        Some(span) => Location {
            line_column: Some(line_column(text, span.start)),
            key: key_at(text, span.start),
        },
        None => Location::default(),
    };
    ConfigError::Parse {
        path: path.to_owned(),
        location,
        // toml messages are short, but keep journal entries on one line regardless.
        message: error.message().trim().replace('\n', "; "),
    }
}

/// 1-based line and column (in characters) of byte `offset`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// The dotted key whose name or value covers byte `offset`, found by re-parsing with spans.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let root = toml::de::DeTable::parse(text).ok()?;
    let mut path = Vec::new();
    find_key(root.get_ref(), offset, &mut path).then(|| path.join("."))
}

fn find_key(table: &toml::de::DeTable<'_>, offset: usize, path: &mut Vec<String>) -> bool {
    for (key, value) in table {
        path.push(key.get_ref().to_string());
        if find_in_value(value.get_ref(), offset, path) {
            return true;
        }
        if key.span().contains(&offset) || value.span().contains(&offset) {
            return true;
        }
        path.pop();
    }
    false
}

fn find_in_value(value: &toml::de::DeValue<'_>, offset: usize, path: &mut Vec<String>) -> bool {
    if let Some(table) = value.as_table() {
        return find_key(table, offset, path);
    }
    if let Some(array) = value.as_array() {
        for (index, item) in array.iter().enumerate() {
            if let Some(last) = path.last_mut() {
                last.push_str(&format!("[{index}]"));
            }
            if find_in_value(item.get_ref(), offset, path) || item.span().contains(&offset) {
                return true;
            }
            if let Some(last) = path.last_mut() {
                last.truncate(last.rfind('[').unwrap_or(last.len()));
            }
        }
    }
    false
}

/// Deserializes the top level by hand because the daemon section's name is only known at run
/// time (`C::SECTION`), and so that errors inside it keep toml's position information.
struct FileSeed<R> {
    section: &'static str,
    raw: PhantomData<fn() -> R>,
}

impl<'de, R: DeserializeOwned + Default> DeserializeSeed<'de> for FileSeed<R> {
    type Value = RawFile<R>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de, R: DeserializeOwned + Default> Visitor<'de> for FileSeed<R> {
    type Value = RawFile<R>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Dragonfly configuration file")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut file = RawFile {
            store: RawStoreConfig::default(),
            nats: RawNatsConfig::default(),
            log: RawLogConfig::default(),
            metrics: RawMetricsConfig::default(),
            daemon: R::default(),
        };
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "store" => file.store = map.next_value()?,
                "nats" => file.nats = map.next_value()?,
                "log" => file.log = map.next_value()?,
                "metrics" => file.metrics = map.next_value()?,
                own if own == self.section => file.daemon = map.next_value()?,
                other if DAEMON_SECTIONS.contains(&other) => {
                    map.next_value::<IgnoredAny>()?;
                }
                other => return Err(de::Error::unknown_field(other, &KNOWN_SECTIONS)),
            }
        }
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct RawOwn {
        listen: Option<String>,
        #[serde(default)]
        workers: u32,
    }

    const PATH: &str = "/etc/dragonfly/dragonfly.toml";

    fn parse(text: &str) -> Result<RawFile<RawOwn>, ConfigError> {
        parse_raw(Path::new(PATH), text, "apid")
    }

    fn error(text: &str) -> ConfigError {
        parse(text).expect_err("text should be refused")
    }

    #[test]
    fn sections_are_picked_out() {
        let file = parse(
            "[store]\npath = \"/a\"\n[nats]\nurl = \"nats://b:1\"\n[log]\nlevel = \"warn\"\n\
             [apid]\nlisten = \"[::1]:9000\"\nworkers = 4\n",
        )
        .unwrap();
        assert_eq!(file.store.path.as_deref(), Some(Path::new("/a")));
        assert_eq!(file.nats.url.as_deref(), Some("nats://b:1"));
        assert_eq!(file.log.level.as_deref(), Some("warn"));
        assert_eq!(file.daemon.listen.as_deref(), Some("[::1]:9000"));
        assert_eq!(file.daemon.workers, 4);
    }

    #[test]
    fn unknown_top_level_section_is_refused_with_position() {
        let err = error("[apid]\nworkers = 1\n\n[dhcp]\nx = 1\n");
        assert_eq!(err.key(), Some("dhcp"));
        assert_eq!(
            err.to_string(),
            format!(
                "{PATH}:4:2: dhcp: unknown section, expected one of: store, nats, log, metrics, apid, \
                 dhcpd, tftpd, ipxed, workflowd, bmcd"
            )
        );
        let err = error("stray = 1\n");
        assert!(
            err.to_string().starts_with(&format!("{PATH}:1:1: stray: ")),
            "{err}"
        );
    }

    #[test]
    fn a_daemon_outside_the_known_list_may_have_its_section() {
        let file = parse_raw::<RawOwn>(Path::new(PATH), "[demo]\nworkers = 2\n", "demo").unwrap();
        assert_eq!(file.daemon.workers, 2);
        let err = parse_raw::<RawOwn>(Path::new(PATH), "[demoo]\n", "demo").unwrap_err();
        assert!(err.to_string().ends_with("workflowd, bmcd, demo"), "{err}");
    }

    #[test]
    fn unknown_key_in_own_section_is_refused_with_key_and_position() {
        let err = error("[apid]\nworkers = 1\nlisen = \"0.0.0.0:1\"\n");
        assert_eq!(err.key(), Some("apid.lisen"), "{err}");
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("{PATH}:3:1: apid.lisen: ")),
            "{text}"
        );
        assert!(text.contains("unknown field `lisen`"), "{text}");
    }

    #[test]
    fn unknown_key_in_shared_section_is_refused() {
        let err = error("[nats]\nurl = \"nats://a:1\"\ntimeout = \"1s\"\n");
        assert_eq!(err.key(), Some("nats.timeout"), "{err}");
    }

    #[test]
    fn other_daemons_sections_are_not_read() {
        let file = parse("[apid]\nworkers = 1\n[bmcd]\nanything = [1, 2]\n[tftpd]\n").unwrap();
        assert_eq!(file.daemon.workers, 1);
    }

    #[test]
    fn wrong_type_reports_key_line_and_column() {
        let err = error("[apid]\nworkers = \"many\"\n");
        assert_eq!(err.key(), Some("apid.workers"), "{err}");
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("{PATH}:2:11: apid.workers: ")),
            "{text}"
        );
    }

    #[test]
    fn wrong_type_in_dotted_and_inline_tables_reports_key() {
        let err = error("apid = { workers = -1 }\n");
        assert_eq!(err.key(), Some("apid.workers"), "{err}");
        let err = error("log.level = 3\n");
        assert_eq!(err.key(), Some("log.level"), "{err}");
    }

    #[test]
    fn keys_inside_arrays_of_tables_are_indexed() {
        let text = "[[a]]\nx = 1\n[[a]]\nx = 2\ny = 3\n";
        let offset = text.find("y =").unwrap();
        assert_eq!(key_at(text, offset).as_deref(), Some("a[1].y"));
        let offset = text.find("x = 1").unwrap();
        assert_eq!(key_at(text, offset).as_deref(), Some("a[0].x"));
    }

    #[test]
    fn line_and_column_count_characters() {
        let text = "a = 1\nb = \"é\"\nc";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, text.find('b').unwrap()), (2, 1));
        assert_eq!(line_column(text, text.find('c').unwrap()), (3, 1));
        // Inside the two bytes of 'é', and past the end: clamped, never a panic.
        let inside = text.find('é').unwrap() + 1;
        assert_eq!(line_column(text, inside), (2, 6));
        assert_eq!(line_column(text, 999), (3, 2));
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[expect(dead_code, reason = "only the field names are used")]
    struct RawEvery {
        plain: Option<String>,
        #[serde(default)]
        listed: Vec<String>,
        #[serde(rename = "renamed-key")]
        renamed: Option<u32>,
        nested: Option<RawOwn>,
    }

    #[test]
    fn accepted_keys_are_the_struct_s_fields() {
        let keys = accepted_keys::<RawEvery>().unwrap();
        assert_eq!(keys, ["plain", "listed", "renamed-key", "nested"]);
        assert_eq!(accepted_keys::<RawStoreConfig>().unwrap(), ["path"]);
        assert_eq!(
            accepted_keys::<RawNatsConfig>().unwrap(),
            [
                "url",
                "name_prefix",
                "connect_timeout",
                "auth",
                "user",
                "credential_file",
                "tls_ca_file",
                "tls_client_cert_file",
                "tls_client_key_file"
            ]
        );
        assert_eq!(
            accepted_keys::<std::collections::HashMap<String, u32>>(),
            None
        );
        assert_eq!(accepted_keys::<u32>(), None);
    }

    /// The list agrees with what `deny_unknown_fields` lets through: every listed key is
    /// accepted, and a key not listed is refused.
    #[test]
    fn accepted_keys_match_what_the_parser_accepts() {
        let keys = accepted_keys::<RawEvery>().unwrap();
        let all: String = keys
            .iter()
            .map(|key| match *key {
                "listed" => "listed = []\n".to_owned(),
                "renamed-key" => "renamed-key = 1\n".to_owned(),
                "nested" => "nested = {}\n".to_owned(),
                other => format!("{other} = \"x\"\n"),
            })
            .collect();
        assert!(toml::from_str::<RawEvery>(&all).is_ok(), "{all}");
        let err = toml::from_str::<RawEvery>(&format!("{all}bogus = 1\n")).unwrap_err();
        assert!(err.to_string().contains("unknown field `bogus`"), "{err}");
    }

    #[test]
    fn syntax_error_keeps_line_and_column() {
        let text = error("[apid]\nworkers = = 1\n").to_string();
        assert!(text.starts_with(&format!("{PATH}:2:")), "{text}");
        assert!(!text.contains('\n'), "must be one journal line: {text}");
    }
}
