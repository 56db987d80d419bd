"""Delta Sharing: shares of Delta tables for partners, served by the gateway (``router.sharing.server``)."""
