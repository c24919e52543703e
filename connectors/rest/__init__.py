from connectors.rest.connector import Resource, RestConfig, RestConnector, pick, place

__all__ = ["Resource", "RestConfig", "RestConnector", "pick", "place"]
