from django.urls import path

from operations import views

urlpatterns = [
    path("", views.ops_overview, name="ops"),
    path("workers/", views.ops_workers, name="ops_workers"),
    path("workers/<str:worker_id>/command/", views.ops_worker_command, name="ops_worker_command"),
]
