//! `s3://` and `oss://` repository URLs: building the object store from the URL and the
//! environment. docs/storage.md documents every variable read here.

use crate::error::{Error, ErrorKind, Result};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::prefix::PrefixStore;
use object_store::{ClientOptions, ObjectStore, RetryConfig};
use std::sync::Arc;
use std::time::Duration;

/// The retry budget object_store applies to each request: transient failures (connection
/// errors, timeouts, 5xx, 429) are retried with exponential backoff for at most this long.
/// [`super::Backend`] adds a few attempts of its own on top, for whole operations.
const RETRY_BUDGET: Duration = Duration::from_secs(60);
const MAX_RETRIES: usize = 6;

/// Build the store for `scheme://rest`; returns it with a description for messages.
pub fn object_store(scheme: &str, rest: &str) -> Result<(Arc<dyn ObjectStore>, String)> {
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let prefix = prefix.trim_matches('/');
    let url = format!("{scheme}://{bucket}/{prefix}");
    if bucket.is_empty() || bucket.contains(['@', ':', '?', '#']) {
        return Err(Error::invalid(format!(
            "repository URL {}: expected {scheme}://BUCKET/PREFIX with a bucket name",
            redact(&format!("{scheme}://{rest}"))
        )));
    }
    let builder = match scheme {
        "s3" => s3_builder(bucket)?,
        "oss" => oss_builder(bucket)?,
        _ => unreachable!("caller checks the scheme"),
    };
    let builder = builder
        .with_retry(RetryConfig { max_retries: MAX_RETRIES, retry_timeout: RETRY_BUDGET, ..Default::default() })
        .with_client_options(client_options(scheme));
    let endpoint = builder
        .get_config_value(&AmazonS3ConfigKey::Endpoint)
        .map(|e| format!(" at {}", redact(&e)))
        .unwrap_or_default();
    let plain_http = builder.get_config_value(&AmazonS3ConfigKey::Endpoint).is_some_and(|e| e.starts_with("http://"));
    let allowed = env_flag("AWS_ALLOW_HTTP") || (scheme == "oss" && env_flag("OSS_ALLOW_HTTP"));
    if plain_http && !allowed {
        let flag = if scheme == "oss" { "OSS_ALLOW_HTTP" } else { "AWS_ALLOW_HTTP" };
        return Err(Error::invalid(format!(
            "repository {url}: the endpoint{endpoint} is plain HTTP, which sends everything unencrypted; set \
             {flag}=true to allow it, or use an https:// endpoint"
        )));
    }
    let store = builder
        .build()
        .map_err(|e| Error::new(ErrorKind::InvalidInput, format!("repository {url}: {}", one_line(&e.to_string()))))?;
    let description = format!("{url}{endpoint}");
    let store: Arc<dyn ObjectStore> =
        if prefix.is_empty() { Arc::new(store) } else { Arc::new(PrefixStore::new(store, prefix)) };
    Ok((store, description))
}

fn client_options(scheme: &str) -> ClientOptions {
    let mut options = ClientOptions::new()
        .with_connect_timeout(Duration::from_secs(10))
        .with_timeout(Duration::from_secs(120))
        .with_pool_idle_timeout(Duration::from_secs(30));
    if env_flag("AWS_ALLOW_HTTP") || (scheme == "oss" && env_flag("OSS_ALLOW_HTTP")) {
        options = options.with_allow_http(true);
    }
    if scheme == "oss" {
        // OSS's own spelling of "create only": it refuses to replace an existing object.
        // Every object cairn writes is write-once, so every request may carry it.
        let mut headers = object_store::HeaderMap::new();
        headers.insert("x-oss-forbid-overwrite", object_store::HeaderValue::from_static("true"));
        options = options.with_default_headers(headers);
    }
    options
}

/// `s3://`: everything object_store reads from `AWS_*` variables (keys, session token,
/// region, `AWS_ENDPOINT_URL`, `AWS_VIRTUAL_HOSTED_STYLE_REQUEST`, instance and container
/// credentials, web identity).
fn s3_builder(bucket: &str) -> Result<AmazonS3Builder> {
    let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
    if let Some(region) = env("AWS_REGION").or_else(|| env("AWS_DEFAULT_REGION")) {
        builder = builder.with_region(region);
    }
    if let Some(endpoint) = env("AWS_ENDPOINT_URL_S3").or_else(|| env("AWS_ENDPOINT_URL")) {
        builder = builder.with_endpoint(endpoint);
    }
    Ok(builder)
}

/// `oss://`: Alibaba Cloud OSS through its S3-compatible API. OSS accepts only
/// virtual-hosted addressing, so the bucket goes into the host name.
fn oss_builder(bucket: &str) -> Result<AmazonS3Builder> {
    let region = env("OSS_REGION");
    let endpoint = match (env("OSS_ENDPOINT"), &region) {
        (Some(endpoint), _) => endpoint,
        (None, Some(region)) => format!("https://oss-{region}.aliyuncs.com"),
        (None, None) => {
            return Err(Error::invalid(format!(
                "repository oss://{bucket}: set OSS_ENDPOINT (e.g. https://oss-cn-hangzhou.aliyuncs.com) or \
                 OSS_REGION (e.g. cn-hangzhou)"
            )))
        }
    };
    let endpoint = if endpoint.contains("://") { endpoint } else { format!("https://{endpoint}") };
    let (scheme, host) = endpoint.split_once("://").expect("has a scheme");
    let host = host.trim_end_matches('/');
    // The region signs requests; OSS names it in the endpoint (oss-cn-hangzhou...).
    let region = match region.or_else(|| oss_region(host)) {
        Some(region) => region,
        None => {
            return Err(Error::invalid(format!(
                "repository oss://{bucket}: the endpoint {host} names no region (an accelerate or custom \
                 endpoint); set OSS_REGION (e.g. cn-hangzhou)"
            )))
        }
    };
    let (Some(key_id), Some(secret)) = (env("OSS_ACCESS_KEY_ID"), env("OSS_ACCESS_KEY_SECRET")) else {
        return Err(Error::invalid(format!(
            "repository oss://{bucket}: set OSS_ACCESS_KEY_ID and OSS_ACCESS_KEY_SECRET"
        )));
    };
    let mut builder = AmazonS3Builder::new()
        .with_bucket_name(bucket)
        .with_region(region)
        .with_endpoint(format!("{scheme}://{bucket}.{host}"))
        .with_virtual_hosted_style_request(true)
        .with_access_key_id(key_id)
        .with_secret_access_key(secret);
    if let Some(token) = env("OSS_SESSION_TOKEN") {
        builder = builder.with_token(token);
    }
    Ok(builder)
}

/// The region an OSS endpoint names: `oss-cn-hangzhou.aliyuncs.com`,
/// `oss-cn-hangzhou-internal.aliyuncs.com`, `s3.oss-cn-hangzhou.aliyuncs.com` (and its
/// `-internal` form) all sign as `cn-hangzhou`. Accelerate endpoints
/// (`oss-accelerate.aliyuncs.com`, `oss-accelerate-overseas...`) and custom domains name
/// none.
fn oss_region(host: &str) -> Option<String> {
    let host = host.split(':').next().unwrap_or(host);
    let label = host.split('.').find(|l| l.starts_with("oss-"))?;
    let region = label.strip_prefix("oss-")?;
    let region = region.strip_suffix("-internal").unwrap_or(region);
    if region.is_empty() || region.starts_with("accelerate") {
        return None;
    }
    Some(region.to_string())
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn env_flag(name: &str) -> bool {
    env(name).is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
}

/// A URL with any `user:password@` part removed, for messages.
pub fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_once('/').map(|(a, p)| (a, Some(p))).unwrap_or((rest, None));
            let authority = authority.rsplit_once('@').map(|(_, host)| host).unwrap_or(authority);
            match path {
                Some(path) => format!("{scheme}://{authority}/{}", path.split('?').next().unwrap_or_default()),
                None => format!("{scheme}://{authority}"),
            }
        }
        None => url.to_string(),
    }
}

/// Collapse a multi-line message (object_store includes response bodies) into one line.
pub fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_oss_endpoint_form_names_its_region() {
        for (host, region) in [
            ("oss-cn-hangzhou.aliyuncs.com", Some("cn-hangzhou")),
            ("oss-cn-hangzhou-internal.aliyuncs.com", Some("cn-hangzhou")),
            ("s3.oss-cn-hangzhou.aliyuncs.com", Some("cn-hangzhou")),
            ("s3.oss-cn-hangzhou-internal.aliyuncs.com", Some("cn-hangzhou")),
            ("oss-ap-southeast-1.aliyuncs.com:443", Some("ap-southeast-1")),
            ("oss-accelerate.aliyuncs.com", None),
            ("oss-accelerate-overseas.aliyuncs.com", None),
            ("backup.example.com", None),
            ("127.0.0.1:9000", None),
        ] {
            assert_eq!(oss_region(host).as_deref(), region, "{host}");
        }
    }

    #[test]
    fn redact_drops_user_info_and_query() {
        assert_eq!(redact("http://key:secret@host:9000/b?X-Amz-Signature=abc"), "http://host:9000/b");
        assert_eq!(redact("s3://bucket/prefix"), "s3://bucket/prefix");
        assert_eq!(redact("http://host"), "http://host");
    }

    #[test]
    fn bucket_is_required() {
        let err = object_store("s3", "/prefix").expect_err("an empty bucket is refused");
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(err.message().contains("BUCKET"), "{}", err.message());
    }
}
