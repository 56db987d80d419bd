variable "bucket_name" {
  description = "The bucket's name (globally unique)."
  type        = string
}

variable "access_log_bucket" {
  description = "The bucket that receives this bucket's server access logs."
  type        = string
}

variable "kms_key_arn" {
  description = "A KMS key to encrypt with; null makes one (rotated yearly) for this bucket."
  type        = string
  default     = null
}

variable "runtime_role_names" {
  description = "IAM roles the runtime's replicas run as (e.g. their IRSA role): each gets the read-only policy."
  type        = list(string)
  default     = []
}

variable "noncurrent_version_days" {
  description = "Days a replaced model version is kept before it expires."
  type        = number
  default     = 90
  validation {
    condition     = var.noncurrent_version_days >= 1
    error_message = "noncurrent_version_days must be at least 1."
  }
}

variable "tags" {
  description = "Tags on everything the module makes."
  type        = map(string)
  default     = {}
}
