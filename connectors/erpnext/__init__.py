from connectors.erpnext.connector import ErpnextConfig, ErpnextConnector

__all__ = ["ErpnextConfig", "ErpnextConnector"]
