//! The DynamoDB tables as plain data, and the code that creates them.
//!
//! [`TABLES`] is the one description of the tables: `create_tables` (the
//! CLI's `dynamodb create-tables`, `serve --create-tables`) builds its
//! CreateTable and UpdateTimeToLive requests from it, and the integration
//! tests in `tests/it/deploy.rs` check that `deploy/template.yaml` declares
//! the same key schemas, attribute definitions, local secondary index and
//! TTL attribute, so the CloudFormation stack and `create-tables` cannot
//! drift apart. The strings (`"S"`, `"HASH"`, `"KEYS_ONLY"`, …) are the
//! DynamoDB API's, which CloudFormation uses too.
//!
//! What only the template adds (point-in-time recovery, encryption with a
//! KMS key, deletion protection) is deployment policy, not layout:
//! `create-tables` is for development, tests and emulators.

use std::time::Duration;

use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::operation::create_table::CreateTableError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, LocalSecondaryIndex, Projection,
    ProjectionType, ScalarAttributeType, TableStatus, TimeToLiveSpecification, TimeToLiveStatus,
};

use super::item::{BY_TYPE_INDEX, PK, SK, TSK, TTL};
use super::{sdk_err, DynamoStore};
use crate::store::StoreError;

/// A DynamoDB scalar attribute type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AttrType {
    S,
    N,
    B,
}

impl AttrType {
    /// `"S"`, `"N"` or `"B"`, as in `AttributeDefinitions`.
    pub fn as_str(self) -> &'static str {
        match self {
            AttrType::S => "S",
            AttrType::N => "N",
            AttrType::B => "B",
        }
    }
}

/// The role of an attribute in a key schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KeyRole {
    Hash,
    Range,
}

impl KeyRole {
    /// `"HASH"` or `"RANGE"`, as in `KeySchema`.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyRole::Hash => "HASH",
            KeyRole::Range => "RANGE",
        }
    }
}

/// What a secondary index projects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IndexProjection {
    /// The table and index keys only (the rest is fetched in the same
    /// Query with `Select = ALL_ATTRIBUTES`).
    KeysOnly,
}

impl IndexProjection {
    /// `"KEYS_ONLY"`, as in `Projection.ProjectionType`.
    pub fn as_str(self) -> &'static str {
        match self {
            IndexProjection::KeysOnly => "KEYS_ONLY",
        }
    }
}

/// A key attribute: its name and scalar type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyAttr {
    pub name: &'static str,
    pub attr_type: AttrType,
}

/// A local secondary index: the table's partition key with another sort key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalIndex {
    pub name: &'static str,
    pub range_key: KeyAttr,
    pub projection: IndexProjection,
}

/// One table, as created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableSpec {
    /// The table is `{prefix}-{suffix}`.
    pub suffix: &'static str,
    pub hash_key: KeyAttr,
    pub range_key: Option<KeyAttr>,
    pub local_indexes: &'static [LocalIndex],
    /// The attribute DynamoDB's TTL reads (epoch seconds), if any.
    pub ttl_attribute: Option<&'static str>,
    /// Always on-demand: `"PAY_PER_REQUEST"`.
    pub billing_mode: &'static str,
}

impl TableSpec {
    /// The table's name for a store prefix (`dynamodb://PREFIX`).
    pub fn table_name(&self, prefix: &str) -> String {
        format!("{prefix}-{}", self.suffix)
    }

    /// The table's key schema, hash key first.
    pub fn key_schema(&self) -> Vec<(&'static str, KeyRole)> {
        let mut keys = vec![(self.hash_key.name, KeyRole::Hash)];
        if let Some(r) = self.range_key {
            keys.push((r.name, KeyRole::Range));
        }
        keys
    }

    /// An index's key schema: the table's hash key, the index's range key.
    pub fn index_key_schema(&self, index: &LocalIndex) -> Vec<(&'static str, KeyRole)> {
        vec![
            (self.hash_key.name, KeyRole::Hash),
            (index.range_key.name, KeyRole::Range),
        ]
    }

    /// Every key attribute of the table and of its indexes, once each (what
    /// `AttributeDefinitions` must list: no more, no less).
    pub fn attribute_definitions(&self) -> Vec<KeyAttr> {
        let mut attrs = vec![self.hash_key];
        attrs.extend(self.range_key);
        attrs.extend(self.local_indexes.iter().map(|i| i.range_key));
        let mut seen = std::collections::HashSet::new();
        attrs.retain(|a| seen.insert(a.name));
        attrs
    }
}

const fn string_key(name: &'static str) -> KeyAttr {
    KeyAttr {
        name,
        attr_type: AttrType::S,
    }
}

/// `{prefix}-events`: events, inbox entries, dedup records, secrets (see
/// docs/dynamodb.md for the item layout).
pub const EVENTS: TableSpec = TableSpec {
    suffix: "events",
    hash_key: string_key(PK),
    range_key: Some(string_key(SK)),
    // The LSI makes the per-type inbox a strongly consistent Query;
    // KEYS_ONLY: the rest is fetched from the item in the same call.
    local_indexes: &[LocalIndex {
        name: BY_TYPE_INDEX,
        range_key: string_key(TSK),
        projection: IndexProjection::KeysOnly,
    }],
    ttl_attribute: Some(TTL),
    billing_mode: "PAY_PER_REQUEST",
};

/// `{prefix}-keys`: API key records, by key id.
pub const KEYS: TableSpec = TableSpec {
    suffix: "keys",
    hash_key: string_key(PK),
    range_key: None,
    local_indexes: &[],
    ttl_attribute: None,
    billing_mode: "PAY_PER_REQUEST",
};

/// Both tables, in creation order.
pub const TABLES: [&TableSpec; 2] = [&EVENTS, &KEYS];

fn attribute(a: KeyAttr) -> Result<AttributeDefinition, StoreError> {
    AttributeDefinition::builder()
        .attribute_name(a.name)
        .attribute_type(ScalarAttributeType::from(a.attr_type.as_str()))
        .build()
        .map_err(StoreError::internal)
}

fn key_schema(keys: Vec<(&str, KeyRole)>) -> Result<Vec<KeySchemaElement>, StoreError> {
    keys.into_iter()
        .map(|(name, role)| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(KeyType::from(role.as_str()))
                .build()
                .map_err(StoreError::internal)
        })
        .collect()
}

impl DynamoStore {
    /// The tables of this store with their specs, in creation order.
    fn tables(&self) -> [(&str, &'static TableSpec); 2] {
        [(&self.events, &EVENTS), (&self.keys, &KEYS)]
    }

    /// Creates both tables if missing, waits until they are ACTIVE and
    /// enables TTL where the spec has a TTL attribute. Idempotent; not
    /// bounded by the request budget (creating a table takes seconds on
    /// AWS), but by 5 min.
    pub async fn create_tables(&self) -> Result<(), StoreError> {
        let work = async {
            for (name, spec) in self.tables() {
                self.create_table(name, spec).await?;
            }
            for (name, _) in self.tables() {
                self.wait_active(name).await?;
            }
            for (name, spec) in self.tables() {
                if let Some(attr) = spec.ttl_attribute {
                    self.enable_ttl(name, attr).await?;
                }
            }
            Ok(())
        };
        match tokio::time::timeout(Duration::from_secs(300), work).await {
            Ok(r) => r,
            Err(elapsed) => Err(StoreError::Unavailable(Box::new(elapsed))),
        }
    }

    async fn create_table(&self, name: &str, spec: &TableSpec) -> Result<(), StoreError> {
        let mut req = self
            .client
            .create_table()
            .table_name(name)
            .billing_mode(BillingMode::from(spec.billing_mode))
            .set_key_schema(Some(key_schema(spec.key_schema())?));
        for a in spec.attribute_definitions() {
            req = req.attribute_definitions(attribute(a)?);
        }
        for index in spec.local_indexes {
            let lsi = LocalSecondaryIndex::builder()
                .index_name(index.name)
                .set_key_schema(Some(key_schema(spec.index_key_schema(index))?))
                .projection(
                    Projection::builder()
                        .projection_type(ProjectionType::from(index.projection.as_str()))
                        .build(),
                )
                .build()
                .map_err(StoreError::internal)?;
            req = req.local_secondary_indexes(lsi);
        }
        match req.send().await {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.as_service_error(),
                    Some(CreateTableError::ResourceInUseException(_))
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(sdk_err(e)),
        }
    }

    async fn wait_active(&self, name: &str) -> Result<(), StoreError> {
        loop {
            let out = self
                .client
                .describe_table()
                .table_name(name)
                .send()
                .await
                .map_err(sdk_err)?;
            if out.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn enable_ttl(&self, name: &str, attribute: &str) -> Result<(), StoreError> {
        let out = self
            .client
            .describe_time_to_live()
            .table_name(name)
            .send()
            .await
            .map_err(sdk_err)?;
        if let Some(d) = out.time_to_live_description() {
            let on = matches!(
                d.time_to_live_status(),
                Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling)
            );
            if on && d.attribute_name() == Some(attribute) {
                return Ok(());
            }
        }
        let spec = TimeToLiveSpecification::builder()
            .enabled(true)
            .attribute_name(attribute)
            .build()
            .map_err(StoreError::internal)?;
        match self
            .client
            .update_time_to_live()
            .table_name(name)
            .time_to_live_specification(spec)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            // A concurrent create-tables enabled it first.
            Err(e) if e.message().is_some_and(|m| m.contains("already enabled")) => Ok(()),
            Err(e) => Err(sdk_err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_specs_use_the_sdk_spellings() {
        // The SDK parses these strings; an unknown one would become
        // `Unknown(..)` and fail only at CreateTable time.
        for spec in TABLES {
            assert_eq!(
                BillingMode::from(spec.billing_mode),
                BillingMode::PayPerRequest
            );
            for a in spec.attribute_definitions() {
                assert_eq!(
                    ScalarAttributeType::from(a.attr_type.as_str()),
                    ScalarAttributeType::S
                );
            }
        }
        assert_eq!(KeyType::from(KeyRole::Hash.as_str()), KeyType::Hash);
        assert_eq!(KeyType::from(KeyRole::Range.as_str()), KeyType::Range);
        assert_eq!(
            ProjectionType::from(IndexProjection::KeysOnly.as_str()),
            ProjectionType::KeysOnly
        );
        assert_eq!(
            ScalarAttributeType::from(AttrType::N.as_str()),
            ScalarAttributeType::N
        );
        assert_eq!(
            ScalarAttributeType::from(AttrType::B.as_str()),
            ScalarAttributeType::B
        );
    }

    #[test]
    fn the_events_table_defines_each_key_attribute_once() {
        let names: Vec<&str> = EVENTS
            .attribute_definitions()
            .iter()
            .map(|a| a.name)
            .collect();
        assert_eq!(names, ["pk", "sk", "tsk"]);
        assert_eq!(
            EVENTS.key_schema(),
            [("pk", KeyRole::Hash), ("sk", KeyRole::Range)]
        );
        assert_eq!(
            EVENTS.index_key_schema(&EVENTS.local_indexes[0]),
            [("pk", KeyRole::Hash), ("tsk", KeyRole::Range)]
        );
        let names: Vec<&str> = KEYS
            .attribute_definitions()
            .iter()
            .map(|a| a.name)
            .collect();
        assert_eq!(names, ["pk"]);
        assert_eq!(KEYS.table_name("p"), "p-keys");
        assert_eq!(EVENTS.table_name("p"), "p-events");
    }
}
