//! Shared by the integration tests: test servers, events.
#![allow(dead_code)]

use edgerec_aws::AwsConfig;
use edgerec_features::event::{Event, EventKind};

/// A fresh table and bucket on the test servers.
pub fn aws_config(test: &str) -> AwsConfig {
    AwsConfig::for_test_servers(&format!("features-{test}")).unwrap_or_else(|e| panic!("{e}"))
}

pub fn event(id: &str, user: &str, item: &str, time_ms: i64) -> Event {
    Event {
        id: id.into(),
        user: user.into(),
        item: item.into(),
        kind: EventKind::View,
        time_ms,
        value: None,
        request_id: None,
    }
}
