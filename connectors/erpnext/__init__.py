from connectors.erpnext.connector import ErpnextConfig, ErpnextConnector, verify_webhook, webhook_signature

__all__ = ["ErpnextConfig", "ErpnextConnector", "verify_webhook", "webhook_signature"]
