output "bucket" {
  description = "The bucket's name: models go under s3://<bucket>/<model>/<version>/."
  value       = aws_s3_bucket.models.id
}

output "bucket_arn" {
  value = aws_s3_bucket.models.arn
}

output "kms_key_arn" {
  value = local.kms_key
}

output "runtime_read_policy_arn" {
  description = "Attach to any other role that runs zeroserve replicas."
  value       = aws_iam_policy.runtime_read.arn
}
