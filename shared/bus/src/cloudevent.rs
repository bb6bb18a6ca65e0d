//! The CloudEvents 1.0 JSON envelope every Dragonfly event travels in.
//!
//! Pure and synchronous (no NATS, no tokio) so it can be tested and fuzzed alone. It must never
//! accept an envelope of another CloudEvents spec version: the attribute set differs between
//! versions, and guessing would hand a subscriber wrong data.

use std::borrow::Cow;

use jiff::Timestamp;
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

use crate::Event;

/// The `datacontenttype` of every event Dragonfly publishes.
pub const JSON_CONTENT_TYPE: &str = "application/json";

/// A CloudEvents `specversion`; only `"1.0"` exists here. Deserializing any other value fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SpecVersion {
    /// `"1.0"`
    #[default]
    V1_0,
}

impl SpecVersion {
    /// The attribute value, `"1.0"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            SpecVersion::V1_0 => "1.0",
        }
    }
}

impl Serialize for SpecVersion {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for SpecVersion {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Cow::<'de, str>::deserialize(deserializer)?;
        match &*value {
            "1.0" => Ok(SpecVersion::V1_0),
            other => Err(D::Error::custom(format_args!(
                "unsupported CloudEvents specversion {other:?} (expected \"1.0\")"
            ))),
        }
    }
}

/// A CloudEvents 1.0 event in the JSON format, carrying `data: T`.
///
/// Serializes exactly the attributes below (`subject` only when set). Deserialization ignores
/// extension attributes (CloudEvents allows any), and rejects a `specversion` other than
/// `"1.0"`; use [`CloudEvent::from_json`] to get that as a typed [`DecodeError`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloudEvent<T> {
    /// Always `"1.0"`.
    pub specversion: SpecVersion,
    /// Unique per event from one source: a UUID v7 string for events Dragonfly publishes.
    pub id: String,
    /// Who published it, e.g. `/dragonfly/apid/<hostname>`.
    pub source: String,
    /// Reverse-DNS event type, e.g. `computer.dragonfly.machine.registered`.
    #[serde(rename = "type")]
    pub ty: String,
    /// When it happened (RFC 3339).
    pub time: Timestamp,
    /// What it is about within the source, e.g. a machine id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Always `application/json` from Dragonfly; the JSON format's default when absent.
    #[serde(default = "json_content_type")]
    pub datacontenttype: String,
    /// The event payload.
    pub data: T,
}

fn json_content_type() -> String {
    JSON_CONTENT_TYPE.to_owned()
}

impl<E: Event> CloudEvent<E> {
    /// Wraps `data` in a new envelope: fresh UUID v7 id, the current time, `E::TYPE` and
    /// `data.subject()`.
    pub fn new(source: impl Into<String>, data: E) -> CloudEvent<E> {
        CloudEvent {
            specversion: SpecVersion::V1_0,
            id: Uuid::now_v7().to_string(),
            source: source.into(),
            ty: E::TYPE.to_owned(),
            time: Timestamp::now(),
            subject: data.subject(),
            datacontenttype: json_content_type(),
            data,
        }
    }
}

impl<T: Serialize> CloudEvent<T> {
    /// The event in the CloudEvents JSON format.
    ///
    /// # Errors
    /// `T`'s `Serialize` implementation failed (e.g. a map with non-string keys).
    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }
}

impl<T: DeserializeOwned> CloudEvent<T> {
    /// Parses an event in the CloudEvents JSON format, telling a wrong or missing
    /// `specversion` apart from other malformations.
    ///
    /// # Errors
    /// [`DecodeError::SpecVersion`] unless `specversion` is `"1.0"`; [`DecodeError::Json`] for
    /// anything else that does not parse as a `CloudEvent<T>`.
    pub fn from_json(bytes: &[u8]) -> Result<CloudEvent<T>, DecodeError> {
        #[derive(Deserialize)]
        struct Probe {
            specversion: Option<serde_json::Value>,
        }
        let probe: Probe = serde_json::from_slice(bytes).map_err(DecodeError::Json)?;
        match probe.specversion {
            Some(serde_json::Value::String(v)) if v == SpecVersion::V1_0.as_str() => {}
            Some(serde_json::Value::String(v)) => {
                return Err(DecodeError::SpecVersion { found: Some(v) });
            }
            other => {
                return Err(DecodeError::SpecVersion {
                    found: other.map(|v| v.to_string()),
                });
            }
        }
        serde_json::from_slice(bytes).map_err(DecodeError::Json)
    }
}

/// Why a message could not be turned into the expected type.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not JSON, or JSON of the wrong shape.
    #[error("malformed JSON body")]
    Json(#[source] serde_json::Error),
    /// `specversion` missing or not `"1.0"`.
    #[error(
        "unsupported CloudEvents specversion {} (expected \"1.0\")",
        .found.as_deref().unwrap_or("(missing)")
    )]
    SpecVersion {
        /// The value found, if any (JSON text when it was not a string).
        found: Option<String>,
    },
    /// A well-formed event of another `type` than the subject carries.
    #[error("event type {found:?} on a subject that carries {expected:?}")]
    WrongType {
        /// The `type` this subject carries.
        expected: &'static str,
        /// The `type` found.
        found: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::MachineRegistered;
    use serde_json::{Value, json};

    fn registered() -> MachineRegistered {
        MachineRegistered {
            machine_id: dragonfly_core::MachineId(Uuid::now_v7()),
            name: "rack1-node07".to_owned(),
            macs: vec![dragonfly_core::MacAddr::new([
                0x52, 0x54, 0, 0x12, 0x34, 0x56,
            ])],
            created: true,
        }
    }

    #[test]
    fn serializes_exactly_the_cloudevents_attributes() {
        let event = CloudEvent::new("/dragonfly/apid/host1", registered());
        let value: Value = serde_json::from_slice(&event.to_json().expect("encode")).expect("json");
        let object = value.as_object().expect("an object");
        let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "data",
                "datacontenttype",
                "id",
                "source",
                "specversion",
                "subject",
                "time",
                "type"
            ]
        );
        assert_eq!(value["specversion"], "1.0");
        assert_eq!(value["type"], "computer.dragonfly.machine.registered");
        assert_eq!(value["source"], "/dragonfly/apid/host1");
        assert_eq!(value["datacontenttype"], "application/json");
        assert_eq!(value["subject"], event.data.machine_id.to_string());
        assert_eq!(value["data"]["name"], "rack1-node07");
        let id: Uuid = value["id"]
            .as_str()
            .expect("id string")
            .parse()
            .expect("uuid");
        assert_eq!(id.get_version_num(), 7);
        let time = value["time"].as_str().expect("time string");
        assert!(time.ends_with('Z'), "{time}");
        assert_eq!(time.parse::<Timestamp>().expect("RFC 3339"), event.time);
    }

    #[test]
    fn omits_an_absent_subject() {
        let mut event = CloudEvent::new("/x", registered());
        event.subject = None;
        let value: Value = serde_json::from_slice(&event.to_json().expect("encode")).expect("json");
        assert!(value.get("subject").is_none(), "{value}");
    }

    #[test]
    fn round_trips() {
        let event = CloudEvent::new("/dragonfly/apid/host1", registered());
        let back = CloudEvent::<MachineRegistered>::from_json(&event.to_json().expect("encode"))
            .expect("decode");
        assert_eq!(back, event);
    }

    fn sample() -> Value {
        json!({
            "specversion": "1.0",
            "id": "0193a5c0-0000-7000-8000-000000000000",
            "source": "/elsewhere",
            "type": "computer.dragonfly.machine.registered",
            "time": "2025-01-02T03:04:05.123+01:00",
            "data": {
                "machineId": "0193a5c0-0000-7000-8000-000000000001",
                "name": "n1",
                "macs": [],
                "created": false
            }
        })
    }

    fn decode(value: &Value) -> Result<CloudEvent<MachineRegistered>, DecodeError> {
        CloudEvent::from_json(&serde_json::to_vec(value).expect("encode"))
    }

    #[test]
    fn tolerates_extensions_and_defaults_optional_attributes() {
        let mut value = sample();
        value["traceparent"] = json!("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
        value["dragonflyshard"] = json!(7);
        let event = decode(&value).expect("decode");
        assert_eq!(event.subject, None);
        assert_eq!(event.datacontenttype, JSON_CONTENT_TYPE);
        assert_eq!(event.time, "2025-01-02T02:04:05.123Z".parse().expect("ts"));
    }

    #[test]
    fn rejects_other_spec_versions_with_a_typed_error() {
        let mut value = sample();
        value["specversion"] = json!("0.3");
        assert!(matches!(
            decode(&value),
            Err(DecodeError::SpecVersion { found: Some(v) }) if v == "0.3"
        ));
        value["specversion"] = json!(1.0);
        assert!(matches!(
            decode(&value),
            Err(DecodeError::SpecVersion { found: Some(v) }) if v == "1.0"
        ));
        value.as_object_mut().expect("object").remove("specversion");
        let err = decode(&value).expect_err("must fail");
        assert!(matches!(err, DecodeError::SpecVersion { found: None }));
        assert_eq!(
            err.to_string(),
            "unsupported CloudEvents specversion (missing) (expected \"1.0\")"
        );

        // Plain serde rejects it too, for callers that bypass `from_json`.
        let mut value = sample();
        value["specversion"] = json!("2.0");
        let err =
            serde_json::from_value::<CloudEvent<MachineRegistered>>(value).expect_err("must fail");
        assert!(err.to_string().contains("specversion \"2.0\""), "{err}");
    }

    #[test]
    fn other_malformations_are_json_errors() {
        let mut value = sample();
        value["data"]["created"] = json!("yes");
        assert!(matches!(decode(&value), Err(DecodeError::Json(_))));
        assert!(matches!(
            CloudEvent::<MachineRegistered>::from_json(b"not json"),
            Err(DecodeError::Json(_))
        ));
        assert!(matches!(
            CloudEvent::<MachineRegistered>::from_json(b"[1, 2]"),
            Err(DecodeError::Json(_))
        ));
    }
}
