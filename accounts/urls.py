from django.urls import include, path

from accounts import views

urlpatterns = [
    path("signup/", views.signup, name="signup"),
    path("profile/", views.profile, name="profile"),
    path("profile/tokens/", views.create_token, name="create_token"),
    path("profile/tokens/<int:token_id>/revoke/", views.revoke_token, name="revoke_token"),
    path("", include("django.contrib.auth.urls")),
]
