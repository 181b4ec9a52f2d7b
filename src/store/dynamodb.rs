//! DynamoDB backend (see docs/dynamodb.md).
