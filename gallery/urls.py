from django.urls import path

from gallery import views

app_name = "gallery"

urlpatterns = [
    path("", views.feed, name="feed"),
    path("png-info/", views.png_info, name="png_info"),
    path("preferences/", views.preferences, name="preferences"),
    path("moderation/", views.moderation_queue, name="moderation"),
    path("moderation/<uuid:pk>/", views.moderate, name="moderate"),
    path("moderation/suspend/<int:user_id>/", views.suspend, name="suspend"),
    path("publish/<uuid:image_id>/", views.publish, name="publish"),
    path("u/<str:username>/", views.author, name="author"),
    path("<uuid:pk>/", views.image, name="image"),
    path("<uuid:pk>/image.png", views.image_file, {"kind": "image"}, name="image_file"),
    path("<uuid:pk>/thumbnail", views.image_file, {"kind": "thumbnail"}, name="thumbnail"),
    path("<uuid:pk>/download.png", views.image_file, {"kind": "download"}, name="download"),
    path("<uuid:pk>/like/", views.like, name="like"),
    path("<uuid:pk>/report/", views.report, name="report"),
    path("<uuid:pk>/unpublish/", views.unpublish_view, name="unpublish"),
]
