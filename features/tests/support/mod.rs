//! Shared by the integration tests: test servers, events.
#![allow(dead_code)]

use edgerec_aws::AwsConfig;
use edgerec_core::{ItemId, UserId};
use edgerec_features::event::{ClientEvent, EventKind};

/// A fresh table and bucket on the test servers.
pub fn aws_config(test: &str) -> AwsConfig {
    AwsConfig::for_test_servers(&format!("features-{test}")).unwrap_or_else(|e| panic!("{e}"))
}

/// An event as a client sends it.
pub fn event(id: &str, user: &str, item: &str, time_ms: i64) -> ClientEvent {
    ClientEvent {
        id: id.into(),
        user: user.into(),
        item: item.into(),
        kind: EventKind::View,
        time_ms,
        value: None,
        request_id: None,
    }
}

pub fn user(id: &str) -> UserId {
    UserId::parse(id).unwrap_or_else(|e| panic!("{e}"))
}

pub fn item(id: &str) -> ItemId {
    ItemId::parse(id).unwrap_or_else(|e| panic!("{e}"))
}
