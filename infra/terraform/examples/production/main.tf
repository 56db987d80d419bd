# A production fraud-scoring endpoint: a reserved floor that never scales to zero, the new version
# taking 10 % of traffic beside the current one, a rate limit, and the pipeline's own token.
terraform {
  required_version = ">= 1.5"
  required_providers {
    zeroserve = {
      source  = "zeroserve.local/zeroserve/zeroserve"
      version = "0.1.0"
    }
  }
}

variable "host" {
  description = "The gateway's URL (or set ZEROSERVE_URL and leave this out)."
  type        = string
  default     = null
}

variable "token" {
  description = "An admin token (or set ZEROSERVE_TOKEN)."
  type        = string
  default     = null
  sensitive   = true
}

variable "current_model_uri" {
  description = "The model serving most traffic."
  type        = string
}

variable "candidate_model_uri" {
  description = "The new version, on 10 % of traffic until it has proved itself."
  type        = string
}

variable "candidate_share" {
  description = "Percent of traffic for the candidate."
  type        = number
  default     = 10
  validation {
    condition     = var.candidate_share >= 0 && var.candidate_share <= 100
    error_message = "candidate_share is a percentage, 0 to 100."
  }
}

provider "zeroserve" {
  host  = var.host
  token = var.token
}

resource "zeroserve_serving_endpoint" "fraud" {
  name = "fraud-scoring"

  served_entity {
    name                        = "current"
    entity_name                 = var.current_model_uri
    min_provisioned_concurrency = 8
    max_provisioned_concurrency = 64
  }

  served_entity {
    name                        = "candidate"
    entity_name                 = var.candidate_model_uri
    min_provisioned_concurrency = 2
    max_provisioned_concurrency = 16
  }

  traffic = {
    current   = 100 - var.candidate_share
    candidate = var.candidate_share
  }

  rate_limit {
    calls          = 60000
    renewal_period = "minute"
  }

  tags = {
    team        = "risk"
    cost_center = "payments"
  }

  # Floors of 8 and 2 replicas' worth of concurrency take a while to come up on a busy cluster.
  ready_timeout_seconds = 1800
}

resource "zeroserve_token" "pipeline" {
  principal = "transaction-pipeline"
  groups    = ["scoring"]
  comment   = "the transaction pipeline's scorer"
}

resource "zeroserve_permissions" "fraud" {
  endpoint = zeroserve_serving_endpoint.fraud.name

  access_control {
    group_name       = "scoring"
    permission_level = "CAN_QUERY"
  }

  access_control {
    group_name       = "risk-engineering"
    permission_level = "CAN_MANAGE"
  }
}

data "zeroserve_serving_endpoint" "fraud" {
  name       = zeroserve_serving_endpoint.fraud.name
  depends_on = [zeroserve_serving_endpoint.fraud]
}

output "invocations_url" {
  value = zeroserve_serving_endpoint.fraud.endpoint_url
}

output "replicas" {
  description = "Replicas ready per served entity, read when the plan was made."
  value       = data.zeroserve_serving_endpoint.fraud.entity_replicas
}

output "pipeline_token" {
  value     = zeroserve_token.pipeline.token
  sensitive = true
}
