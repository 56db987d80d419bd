# A development endpoint that costs nothing while idle: one model, scaled to zero, queried with its own
# token. `zeroserve terraform mirror ~/.zeroserve/terraform` writes the provider and its lock entry:
#   cp ~/.zeroserve/terraform/.terraform.lock.hcl . && terraform init -plugin-dir ~/.zeroserve/terraform
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

variable "model_uri" {
  description = "Where the model is: s3://bucket/prefix, file:///path, or models:/name/version."
  type        = string
}

provider "zeroserve" {
  host  = var.host
  token = var.token
}

resource "zeroserve_serving_endpoint" "propensity" {
  name = "propensity-dev"

  served_entity {
    name                  = "current"
    entity_name           = var.model_uri
    scale_to_zero_enabled = true
  }

  tags = {
    environment = "dev"
  }
}

resource "zeroserve_token" "notebook" {
  principal = "data-science"
  comment   = "queries the dev endpoint from notebooks"
  # A week: a development token should not outlive the experiment.
  lifetime_seconds = 604800
}

resource "zeroserve_permissions" "propensity" {
  endpoint = zeroserve_serving_endpoint.propensity.name

  access_control {
    user_name        = zeroserve_token.notebook.principal
    permission_level = "CAN_QUERY"
  }
}

output "invocations_url" {
  value = zeroserve_serving_endpoint.propensity.endpoint_url
}

output "notebook_token" {
  value     = zeroserve_token.notebook.token
  sensitive = true
}
