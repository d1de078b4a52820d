"""The jobs REST API (DRF): serializers, views, routes and the one error shape."""
