//! Shared by the integration tests: test servers, events.
#![allow(dead_code)]

use edgerec_aws::AwsConfig;
use edgerec_features::event::{Event, EventKind};

/// A fresh table and bucket on the test servers `scripts/aws-local.sh start` runs (its variables say where).
pub fn aws_config(test: &str) -> AwsConfig {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!("{name} is not set: start the test servers with `eval \"$(scripts/aws-local.sh start)\"` (scripts/test.sh does)")
        })
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .subsec_nanos();
    let short: String = test.chars().take(24).collect();
    let name = format!("features-{short}-{}-{nanos}", std::process::id()).replace('_', "-");
    AwsConfig {
        region: "us-east-1".into(),
        dynamodb_endpoint: Some(var("EDGEREC_TEST_DYNAMODB")),
        s3_endpoint: Some(var("EDGEREC_TEST_S3")),
        table: name.clone(),
        bucket: name,
        access_key_id: Some(var("EDGEREC_TEST_AWS_KEY")),
        secret_access_key: Some(var("EDGEREC_TEST_AWS_SECRET")),
    }
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
