//! What we send a Redfish service and how we read its answers: pure functions, no I/O.
//!
//! Kept apart from the HTTP client in the parent module so that every request body and every
//! answer we rely on (the shapes of DMTF's Redfish schema, as served by sushy-tools and by
//! vendors' BMCs) is unit-tested without a BMC. The password is not an input of anything here.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::{BmcError, BootDevice, BootMode, BootPersistence, BootTarget, PowerAction, PowerState};

/// The service root's collection of computer systems.
pub(crate) const SYSTEMS: &str = "/redfish/v1/Systems";

/// The path of the system named in the configuration: an `@odata.id` (starting with `/`) as
/// it is, anything else as a member id of [`SYSTEMS`].
pub(crate) fn system_path(configured: &str) -> String {
    if configured.starts_with('/') {
        configured.trim_end_matches('/').to_owned()
    } else {
        format!("{SYSTEMS}/{configured}")
    }
}

/// The path of the system's reset action. The Redfish specification fixes action URIs as
/// `<resource>/Actions/<Schema>.<Action>`, so no GET is needed to find it.
pub(crate) fn reset_path(system: &str) -> String {
    format!("{system}/Actions/ComputerSystem.Reset")
}

/// The `ResetType` for an action that is one reset; `None` for a cycle, which is either
/// `PowerCycle` (when the system lists it) or `ForceOff` then `On`.
pub(crate) fn reset_type(action: PowerAction) -> Option<&'static str> {
    match action {
        PowerAction::On => Some("On"),
        PowerAction::OffSoft => Some("GracefulShutdown"),
        PowerAction::OffHard => Some("ForceOff"),
        PowerAction::Reset => Some("ForceRestart"),
        PowerAction::Cycle => None,
    }
}

/// The body of a `ComputerSystem.Reset` POST.
pub(crate) fn reset_body(reset_type: &str) -> Value {
    json!({ "ResetType": reset_type })
}

/// The body of the PATCH of the system that sets its boot source override.
pub(crate) fn boot_body(target: BootTarget) -> Value {
    let device = match target.device {
        BootDevice::Pxe => "Pxe",
        BootDevice::Disk => "Hdd",
    };
    let enabled = match target.persistence {
        BootPersistence::Once => "Once",
        BootPersistence::Persistent => "Continuous",
    };
    let mode = match target.mode {
        BootMode::Uefi => "UEFI",
        BootMode::Legacy => "Legacy",
    };
    json!({
        "Boot": {
            "BootSourceOverrideTarget": device,
            "BootSourceOverrideEnabled": enabled,
            "BootSourceOverrideMode": mode,
        }
    })
}

#[derive(Deserialize)]
struct Collection {
    #[serde(rename = "Members", default)]
    members: Vec<Link>,
}

#[derive(Deserialize)]
struct Link {
    #[serde(rename = "@odata.id")]
    id: String,
}

/// The `@odata.id` of every member of a collection.
pub(crate) fn parse_members(body: &[u8]) -> Result<Vec<String>, BmcError> {
    let collection: Collection = parse(body)?;
    Ok(collection.members.into_iter().map(|m| m.id).collect())
}

/// The one system of a BMC that manages exactly one; otherwise the error names them all.
pub(crate) fn only_system(members: Vec<String>) -> Result<String, BmcError> {
    match <[String; 1]>::try_from(members) {
        Ok([only]) => Ok(only.trim_end_matches('/').to_owned()),
        Err(members) => Err(BmcError::NoSingleSystem { members }),
    }
}

/// What the driver reads of a `ComputerSystem`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct System {
    /// `PowerState` as the BMC spells it (`On`, `Off`, `PoweringOn`, `PoweringOff`, `Paused`).
    pub(crate) power_state: Option<String>,
    /// The reset action's `ResetType@Redfish.AllowableValues`; empty when not listed.
    pub(crate) reset_types: Vec<String>,
}

#[derive(Deserialize)]
struct RawSystem {
    #[serde(rename = "PowerState")]
    power_state: Option<String>,
    #[serde(rename = "Actions")]
    actions: Option<RawActions>,
}

#[derive(Deserialize)]
struct RawActions {
    #[serde(rename = "#ComputerSystem.Reset")]
    reset: Option<RawReset>,
}

#[derive(Deserialize)]
struct RawReset {
    #[serde(rename = "ResetType@Redfish.AllowableValues", default)]
    allowable: Vec<String>,
}

pub(crate) fn parse_system(body: &[u8]) -> Result<System, BmcError> {
    let raw: RawSystem = parse(body)?;
    Ok(System {
        power_state: raw.power_state,
        reset_types: raw
            .actions
            .and_then(|a| a.reset)
            .map(|r| r.allowable)
            .unwrap_or_default(),
    })
}

/// The power state a caller acts on. A transition counts as the state it leads to (as
/// OpenStack Ironic reads it): a machine powering off will be off, and asking to power it
/// off again is pointless.
pub(crate) fn power_state(system: &System) -> Result<PowerState, BmcError> {
    match system.power_state.as_deref() {
        Some("On" | "PoweringOn") => Ok(PowerState::On),
        Some("Off" | "PoweringOff") => Ok(PowerState::Off),
        Some(_) => Ok(PowerState::Unknown),
        None => Err(BmcError::UnexpectedOutput {
            output: "the system has no PowerState".to_owned(),
        }),
    }
}

/// Whether the system's reset action accepts `PowerCycle` (Redfish 2018.2 on): then a cycle
/// is one request, done by the BMC itself.
pub(crate) fn has_power_cycle(system: &System) -> bool {
    system.reset_types.iter().any(|t| t == "PowerCycle")
}

/// The text of a Redfish error answer: `error.message` followed by the `Message` of every
/// `@Message.ExtendedInfo` entry (where BMCs put the useful part, "The value 'Foo' for the
/// property ResetType is not in the list of acceptable values"), or the body itself,
/// shortened, when it is not a Redfish error.
pub(crate) fn error_text(body: &[u8]) -> String {
    let mut parts: Vec<String> = Vec::new();
    if let Ok(value) = serde_json::from_slice::<Value>(body) {
        let error = value.get("error").unwrap_or(&value);
        if let Some(message) = error.get("message").and_then(Value::as_str) {
            parts.push(message.to_owned());
        }
        if let Some(infos) = error.get("@Message.ExtendedInfo").and_then(Value::as_array) {
            for info in infos {
                if let Some(message) = info.get("Message").and_then(Value::as_str)
                    && !parts.iter().any(|p| p == message)
                {
                    parts.push(message.to_owned());
                }
            }
        }
    }
    if parts.is_empty() {
        shorten(&String::from_utf8_lossy(body))
    } else {
        // Shortened too: a BMC's message becomes a machine condition and a log line.
        shorten(&parts.join("; "))
    }
}

/// At most 200 characters of a body, on one line, for an error message.
fn shorten(text: &str) -> String {
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(200) {
        Some((end, _)) => format!("{}…", &line[..end]),
        None => line,
    }
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, BmcError> {
    serde_json::from_slice(body).map_err(|e| BmcError::UnexpectedOutput {
        output: format!("{e}: {}", shorten(&String::from_utf8_lossy(body))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// JSON values of any shape, a few levels deep, with the keys a BMC's answers use.
    fn json() -> impl Strategy<Value = Value> {
        let key = prop_oneof![
            Just("Members".to_owned()),
            Just("@odata.id".to_owned()),
            Just("PowerState".to_owned()),
            Just("Actions".to_owned()),
            Just("#ComputerSystem.Reset".to_owned()),
            Just("ResetType@Redfish.AllowableValues".to_owned()),
            Just("error".to_owned()),
            Just("message".to_owned()),
            Just("@Message.ExtendedInfo".to_owned()),
            Just("Message".to_owned()),
            "[a-zA-Z@.#]{0,12}",
        ];
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            ".{0,40}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 64, 8, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::from),
                prop::collection::btree_map(key.clone(), inner, 0..8)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Every reader of an answer on `body`; the length of its error text.
    fn read_every_way(body: &[u8]) -> usize {
        let _ = parse_members(body).and_then(only_system);
        if let Ok(system) = parse_system(body) {
            let _ = power_state(&system);
            let _ = has_power_cycle(&system);
        }
        error_text(body).chars().count()
    }

    proptest! {
        // A BMC's answer is input from the network: whatever it is, each reader gives a
        // value or an error, never a panic, and an error message stays short.
        #[test]
        fn any_bytes_are_read_or_refused(body in prop::collection::vec(any::<u8>(), 0..600)) {
            prop_assert!(read_every_way(&body) <= 201);
        }

        #[test]
        fn any_json_is_read_or_refused(value in json()) {
            prop_assert!(read_every_way(&serde_json::to_vec(&value).unwrap()) <= 201);
        }
    }

    #[test]
    fn a_configured_system_is_an_id_or_a_path() {
        assert_eq!(system_path("1"), "/redfish/v1/Systems/1");
        assert_eq!(
            system_path("/redfish/v1/Systems/System.Embedded.1/"),
            "/redfish/v1/Systems/System.Embedded.1"
        );
        assert_eq!(
            reset_path("/redfish/v1/Systems/1"),
            "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset"
        );
    }

    #[test]
    fn every_action_but_cycle_is_one_reset_type() {
        assert_eq!(reset_type(PowerAction::On), Some("On"));
        assert_eq!(reset_type(PowerAction::OffSoft), Some("GracefulShutdown"));
        assert_eq!(reset_type(PowerAction::OffHard), Some("ForceOff"));
        assert_eq!(reset_type(PowerAction::Reset), Some("ForceRestart"));
        assert_eq!(reset_type(PowerAction::Cycle), None);
        assert_eq!(
            reset_body("ForceOff").to_string(),
            r#"{"ResetType":"ForceOff"}"#
        );
    }

    #[test]
    fn boot_bodies() {
        let body = boot_body(BootTarget {
            device: BootDevice::Pxe,
            persistence: BootPersistence::Once,
            mode: BootMode::Uefi,
        });
        assert_eq!(
            body,
            json!({"Boot": {"BootSourceOverrideTarget": "Pxe",
                "BootSourceOverrideEnabled": "Once", "BootSourceOverrideMode": "UEFI"}})
        );
        let body = boot_body(BootTarget {
            device: BootDevice::Disk,
            persistence: BootPersistence::Persistent,
            mode: BootMode::Legacy,
        });
        assert_eq!(
            body,
            json!({"Boot": {"BootSourceOverrideTarget": "Hdd",
                "BootSourceOverrideEnabled": "Continuous", "BootSourceOverrideMode": "Legacy"}})
        );
    }

    #[test]
    fn one_member_is_the_system_and_more_are_named() {
        let body = br#"{"@odata.id": "/redfish/v1/Systems", "Members@odata.count": 1,
            "Members": [{"@odata.id": "/redfish/v1/Systems/437XR1138R2"}]}"#;
        let members = parse_members(body).unwrap();
        assert_eq!(
            only_system(members).unwrap(),
            "/redfish/v1/Systems/437XR1138R2"
        );

        let body = br#"{"Members": [{"@odata.id": "/redfish/v1/Systems/a"},
            {"@odata.id": "/redfish/v1/Systems/b"}]}"#;
        let err = only_system(parse_members(body).unwrap()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the BMC has 2 systems (/redfish/v1/Systems/a, /redfish/v1/Systems/b); \
             configure which one"
        );
        let err = only_system(parse_members(br#"{"Members": []}"#).unwrap()).unwrap_err();
        assert!(matches!(err, BmcError::NoSingleSystem { ref members } if members.is_empty()));
        assert!(matches!(
            parse_members(b"<html>login</html>"),
            Err(BmcError::UnexpectedOutput { .. })
        ));
    }

    /// Abridged from sushy-tools' system template and DMTF's mockups.
    const SYSTEM: &[u8] = br##"{
        "@odata.id": "/redfish/v1/Systems/1", "Id": "1", "PowerState": "PoweringOff",
        "Boot": {"BootSourceOverrideTarget": "Hdd"},
        "Actions": {"#ComputerSystem.Reset": {
            "target": "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset",
            "ResetType@Redfish.AllowableValues": ["On", "ForceOff", "PowerCycle"]}}}"##;

    #[test]
    fn the_system_says_its_power_state_and_reset_types() {
        let system = parse_system(SYSTEM).unwrap();
        assert_eq!(system.power_state.as_deref(), Some("PoweringOff"));
        assert_eq!(power_state(&system).unwrap(), PowerState::Off);
        assert!(has_power_cycle(&system));

        let system = parse_system(br#"{"PowerState": "Paused"}"#).unwrap();
        assert_eq!(power_state(&system).unwrap(), PowerState::Unknown);
        assert!(!has_power_cycle(&system));
        for (state, expected) in [
            ("On", PowerState::On),
            ("PoweringOn", PowerState::On),
            ("Off", PowerState::Off),
        ] {
            let system = System {
                power_state: Some(state.to_owned()),
                reset_types: Vec::new(),
            };
            assert_eq!(power_state(&system).unwrap(), expected, "{state}");
        }
        let system = parse_system(b"{}").unwrap();
        assert!(matches!(
            power_state(&system),
            Err(BmcError::UnexpectedOutput { .. })
        ));
    }

    #[test]
    fn error_text_takes_the_message_and_its_extended_info() {
        let body = br#"{"error": {"code": "Base.1.0.GeneralError",
            "message": "A general error has occurred. See ExtendedInfo for more information.",
            "@Message.ExtendedInfo": [
                {"MessageId": "Base.1.0.PropertyValueNotInList",
                 "Message": "The value Foo for the property ResetType is not in the list of acceptable values."}]}}"#;
        assert_eq!(
            error_text(body),
            "A general error has occurred. See ExtendedInfo for more information.; \
             The value Foo for the property ResetType is not in the list of acceptable values."
        );
        assert_eq!(
            error_text(b"PATCH only works for Boot and\n  IndicatorLED elements"),
            "PATCH only works for Boot and IndicatorLED elements"
        );
        let long = "x".repeat(500);
        assert_eq!(error_text(long.as_bytes()).chars().count(), 201);
        assert_eq!(error_text(b""), "");
    }
}
