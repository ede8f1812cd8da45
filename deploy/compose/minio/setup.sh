#!/bin/sh
# Entry point of the one-shot `minio-setup` job (the mc image): the file store's bucket, private,
# and an S3 user for edgefleet that may use that bucket only (minio/edgefleet-files-policy.json).
# Safe to run again: the bucket and the policy are kept, the user's secret is set again.
set -eu

bucket=edgefleet-files
mc alias set local "${MINIO_URL:-http://minio:9000}" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null
mc mb --ignore-existing "local/$bucket"
mc anonymous set none "local/$bucket"
mc admin policy create local "$bucket" /etc/edgefleet-minio/edgefleet-files-policy.json
mc admin user add local "$S3_ACCESS_KEY" "$S3_SECRET_KEY"
if ! mc admin policy attach local "$bucket" --user "$S3_ACCESS_KEY"; then
    # attaching a policy the user already has is refused; anything else is an error
    case "$(mc admin user info local "$S3_ACCESS_KEY")" in
        *"$bucket"*) echo "policy $bucket already attached to $S3_ACCESS_KEY" ;;
        *) exit 1 ;;
    esac
fi
echo "bucket $bucket ready for $S3_ACCESS_KEY"
