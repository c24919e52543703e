from connectors.soap.connector import SoapConfig, SoapConnector, clear_wsdl_cache, flatten

__all__ = ["SoapConfig", "SoapConnector", "clear_wsdl_cache", "flatten"]
