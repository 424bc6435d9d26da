//! The AWS plumbing the registry and the feature store share: clients configured to fail fast (an unreachable
//! service is reported at once, not after minutes of retries), path-style S3 so S3-compatible servers work, table
//! and bucket creation, and SDK errors turned into one readable line.

use std::time::Duration;

use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
};

pub use aws_sdk_dynamodb;
pub use aws_sdk_s3;

/// Where the services are and how to reach them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsConfig {
    pub region: String,
    /// A custom endpoint (DynamoDB Local, a test server); `None` for AWS itself.
    pub dynamodb_endpoint: Option<String>,
    pub s3_endpoint: Option<String>,
    pub table: String,
    pub bucket: String,
    /// Static credentials. Without them the standard `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` variables are
    /// read.
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
}

/// A DynamoDB and an S3 client for one [`AwsConfig`].
#[derive(Debug, Clone)]
pub struct Clients {
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub s3: aws_sdk_s3::Client,
}

impl Clients {
    /// Clients with one retry and short connect timeouts.
    pub fn connect(config: &AwsConfig) -> Self {
        let timeouts = aws_sdk_dynamodb::config::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(2))
            .operation_attempt_timeout(Duration::from_secs(30))
            .build();
        let credentials = match (&config.access_key_id, &config.secret_access_key) {
            (Some(id), Some(secret)) => Some(aws_sdk_dynamodb::config::Credentials::new(
                id,
                secret,
                None,
                None,
                "edgerec-config",
            )),
            _ => std::env::var("AWS_ACCESS_KEY_ID")
                .ok()
                .zip(std::env::var("AWS_SECRET_ACCESS_KEY").ok())
                .map(|(id, secret)| {
                    aws_sdk_dynamodb::config::Credentials::new(
                        id,
                        secret,
                        std::env::var("AWS_SESSION_TOKEN").ok(),
                        None,
                        "environment",
                    )
                }),
        };
        let mut dynamodb = aws_sdk_dynamodb::Config::builder()
            .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
            .region(aws_sdk_dynamodb::config::Region::new(config.region.clone()))
            .retry_config(
                aws_sdk_dynamodb::config::retry::RetryConfig::standard().with_max_attempts(2),
            )
            .timeout_config(timeouts.clone());
        let mut s3 = aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new(config.region.clone()))
            .retry_config(aws_sdk_s3::config::retry::RetryConfig::standard().with_max_attempts(2))
            .timeout_config(timeouts)
            .force_path_style(true)
            .request_checksum_calculation(
                aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
            )
            .response_checksum_validation(
                aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired,
            );
        if let Some(endpoint) = &config.dynamodb_endpoint {
            dynamodb = dynamodb.endpoint_url(endpoint);
        }
        if let Some(endpoint) = &config.s3_endpoint {
            s3 = s3.endpoint_url(endpoint);
        }
        if let Some(credentials) = credentials {
            dynamodb = dynamodb.credentials_provider(credentials.clone());
            s3 = s3.credentials_provider(credentials);
        }
        Self {
            dynamodb: aws_sdk_dynamodb::Client::from_conf(dynamodb.build()),
            s3: aws_sdk_s3::Client::from_conf(s3.build()),
        }
    }
}

/// Creates `table` (string keys `pk` and `sk`, on demand billing) unless it exists.
pub async fn ensure_table(dynamodb: &aws_sdk_dynamodb::Client, table: &str) -> Result<(), String> {
    let attribute = |name: &str| {
        built(
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build(),
        )
    };
    let key = |name: &str, kind: KeyType| {
        built(
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kind)
                .build(),
        )
    };
    let created = dynamodb
        .create_table()
        .table_name(table)
        .attribute_definitions(attribute("pk"))
        .attribute_definitions(attribute("sk"))
        .key_schema(key("pk", KeyType::Hash))
        .key_schema(key("sk", KeyType::Range))
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await;
    match created {
        Ok(_) => Ok(()),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_in_use_exception()) =>
        {
            Ok(())
        }
        Err(e) => Err(describe("creating the DynamoDB table", e)),
    }
}

/// Creates `bucket` unless it exists.
pub async fn ensure_bucket(s3: &aws_sdk_s3::Client, bucket: &str) -> Result<(), String> {
    match s3.create_bucket().bucket(bucket).send().await {
        Ok(_) => Ok(()),
        Err(e)
            if e.as_service_error().is_some_and(|s| {
                s.is_bucket_already_owned_by_you() || s.is_bucket_already_exists()
            }) =>
        {
            Ok(())
        }
        Err(e) => Err(describe("creating the S3 bucket", e)),
    }
}

impl AwsConfig {
    /// A fresh table and bucket named after `label` on the test servers that `scripts/aws-local.sh start` runs
    /// (its `EDGEREC_TEST_*` variables say where, and with which keys).
    pub fn for_test_servers(label: &str) -> Result<Self, String> {
        let var = |name: &str| {
            std::env::var(name).map_err(|_| {
                format!("{name} is not set: start the test servers with `eval \"$(scripts/aws-local.sh start)\"` (scripts/test.sh does)")
            })
        };
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        // S3 bucket names: 3-63 lowercase letters, digits and hyphens.
        let short: String = label.chars().take(24).collect();
        let name = format!("edgerec-{short}-{}-{nanos}", std::process::id())
            .to_lowercase()
            .replace('_', "-");
        Ok(AwsConfig {
            region: "us-east-1".into(),
            dynamodb_endpoint: Some(var("EDGEREC_TEST_DYNAMODB")?),
            s3_endpoint: Some(var("EDGEREC_TEST_S3")?),
            table: name.clone(),
            bucket: name,
            access_key_id: Some(var("EDGEREC_TEST_AWS_KEY")?),
            secret_access_key: Some(var("EDGEREC_TEST_AWS_SECRET")?),
        })
    }
}

/// `what` failed, with the service's error code and message, or the transport's reason (connection refused, a
/// timeout) when no answer came.
pub fn describe<E: ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(
    what: &str,
    e: SdkError<E, R>,
) -> String {
    let detail = match &e {
        SdkError::ServiceError(service) => {
            let err = service.err();
            format!(
                "{}: {}",
                err.code().unwrap_or("error"),
                err.message().unwrap_or_default()
            )
        }
        other => aws_sdk_dynamodb::error::DisplayErrorContext(other).to_string(),
    };
    format!("{what}: {detail}")
}

/// Unwraps a builder result whose required fields the caller set.
pub fn built<T>(result: Result<T, aws_sdk_dynamodb::error::BuildError>) -> T {
    result.expect("every required field is set")
}
