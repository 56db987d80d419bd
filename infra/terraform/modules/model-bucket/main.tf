# The S3 bucket zeroserve's models live in: versioned (a model overwritten by mistake can be restored),
# encrypted with a KMS key that rotates, never public, TLS only, its access logged, old versions
# expired; and a read-only policy for the runtime's role (replicas read models, never write them).
terraform {
  required_version = ">= 1.5"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.0"
    }
  }
}

data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}

locals {
  create_key = var.kms_key_arn == null
  kms_key    = local.create_key ? aws_kms_key.models[0].arn : var.kms_key_arn
}

data "aws_iam_policy_document" "key" {
  # In a key policy "*" is the key itself, not every resource: these three checks read it as an IAM
  # policy. The account administers its key (AWS's default key policy); decrypt is granted through IAM.
  # checkov:skip=CKV_AWS_111: a key policy's "*" resource is this key alone
  # checkov:skip=CKV_AWS_356: a key policy's "*" resource is this key alone
  # checkov:skip=CKV_AWS_109: a key policy's "*" resource is this key alone
  statement {
    sid       = "AccountAdministers"
    actions   = ["kms:*"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["arn:${data.aws_partition.current.partition}:iam::${data.aws_caller_identity.current.account_id}:root"]
    }
  }
}

resource "aws_kms_key" "models" {
  count                   = local.create_key ? 1 : 0
  description             = "zeroserve models in ${var.bucket_name}"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.key.json
  tags                    = var.tags
}

resource "aws_s3_bucket" "models" {
  # checkov:skip=CKV_AWS_144: models are rebuilt from the registry and training pipeline; replicating them to a second region is the operator's choice, made outside this module
  # checkov:skip=CKV2_AWS_62: nothing consumes the bucket's events; zeroserve reads models when an endpoint asks for them
  bucket = var.bucket_name
  tags   = var.tags
}

resource "aws_s3_bucket_ownership_controls" "models" {
  bucket = aws_s3_bucket.models.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "models" {
  bucket                  = aws_s3_bucket.models.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "models" {
  bucket = aws_s3_bucket.models.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "models" {
  bucket = aws_s3_bucket.models.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = local.kms_key
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_logging" "models" {
  bucket        = aws_s3_bucket.models.id
  target_bucket = var.access_log_bucket
  target_prefix = "s3/${var.bucket_name}/"
}

resource "aws_s3_bucket_lifecycle_configuration" "models" {
  bucket = aws_s3_bucket.models.id
  rule {
    id     = "expire-replaced-versions"
    status = "Enabled"
    filter {}
    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_days
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }
  depends_on = [aws_s3_bucket_versioning.models]
}

data "aws_iam_policy_document" "tls_only" {
  statement {
    sid     = "DenyInsecureTransport"
    effect  = "Deny"
    actions = ["s3:*"]
    resources = [
      aws_s3_bucket.models.arn,
      "${aws_s3_bucket.models.arn}/*",
    ]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "models" {
  bucket     = aws_s3_bucket.models.id
  policy     = data.aws_iam_policy_document.tls_only.json
  depends_on = [aws_s3_bucket_public_access_block.models]
}

data "aws_iam_policy_document" "runtime_read" {
  statement {
    sid       = "ListModels"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.models.arn]
  }
  statement {
    sid       = "ReadModels"
    actions   = ["s3:GetObject", "s3:GetObjectVersion"]
    resources = ["${aws_s3_bucket.models.arn}/*"]
  }
  statement {
    sid       = "DecryptModels"
    actions   = ["kms:Decrypt"]
    resources = [local.kms_key]
  }
}

resource "aws_iam_policy" "runtime_read" {
  name        = "${var.bucket_name}-runtime-read"
  description = "zeroserve replicas read models from ${var.bucket_name}; nothing else"
  policy      = data.aws_iam_policy_document.runtime_read.json
  tags        = var.tags
}

resource "aws_iam_role_policy_attachment" "runtime_read" {
  for_each   = toset(var.runtime_role_names)
  role       = each.value
  policy_arn = aws_iam_policy.runtime_read.arn
}
