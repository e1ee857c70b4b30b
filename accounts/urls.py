from allauth.account import views as allauth_views
from django.urls import include, path

from accounts import credit_views, views

urlpatterns = [
    # Sign-up and e-mail confirmation are django-allauth's (throttled, verified, no enumeration);
    # log-in, log-out and password reset stay Django's views, where django-axes watches log-ins.
    path("signup/", allauth_views.signup, name="signup"),
    path("profile/", views.profile, name="profile"),
    path("profile/tokens/", views.create_token, name="create_token"),
    path("profile/tokens/<int:token_id>/revoke/", views.revoke_token, name="revoke_token"),
    path("credits/", credit_views.credits, name="credits"),
    path("credits/redeem/", credit_views.redeem, name="redeem"),
    path("shop/checkout/", credit_views.checkout, name="checkout"),
    path("shop/success/", credit_views.checkout_success, name="checkout_success"),
    path("shop/cancel/", credit_views.checkout_cancel, name="checkout_cancel"),
    path("stripe/webhook/", credit_views.stripe_webhook, name="stripe_webhook"),
    path("", include("django.contrib.auth.urls")),
    path("", include("allauth.urls")),
]
