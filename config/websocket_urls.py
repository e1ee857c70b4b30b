# Websocket routes; the generation app adds /ws/jobs/.
websocket_urlpatterns: list = []
